"""
Samba on the dnas nodes: the shares of samba_shares (folders of dnas_path), the users of
samba_users, every file written as the dnas user.
"""

from __future__ import annotations

import re
from posixpath import join, normpath

from pyinfra.api import HiddenValue, deploy
from pyinfra.operations import systemd

from operations import samba as samba_ops, secrets as secrets_ops, system

from .common import dnas_owner, owned_folders
from homecloud.schema import SHARE_NAME_RE, UNIX_USER_RE, Cluster, Entries, Key, Kind, Layer, Section, check_entries, check_relative, did_you_mean, flag, is_secret_bad

DNAS = ("dnas",)
SAMBA_RESERVED = {"global", "homes", "printers", "print$", "ipc$"}
WORKGROUP_RE = re.compile(r"[A-Za-z0-9._-]{1,15}")

SHARES = Entries(
    "share",
    "name",
    {"name": Kind(required=True), "path": Kind(required=True), "read_only": flag(), "valid_users": Kind(list), "guest_ok": flag()},
    '{"name": "data", "path": "data", "read_only": False, "valid_users": ["alice"], "guest_ok": False}',
)


def check(err, cluster: Cluster) -> None:
    for spec in cluster.group("dnas"):
        if spec.data.get("samba_enabled") is True:
            _check_host(err, spec)


def _check_host(err, spec) -> None:
    data = spec.data
    users_known = isinstance(data.get("samba_users"), dict)  # else reported by the type check
    users = data.get("samba_users") if users_known else {}
    for user, password in users.items():
        if not isinstance(user, str) or not UNIX_USER_RE.fullmatch(user):
            err(spec.name, "samba_users", f"`{user!r}` is not a valid user name", "use lower-case letters, digits, _ or -")
        elif user in ("root", data.get("dnas_user")):
            err(spec.name, "samba_users", f"`{user}` cannot be a Samba user (root, or the dnas owner every share writes as)", "pick a person's name, e.g. alice")
        if password is not None and not isinstance(password, str):
            err(spec.name, "samba_users", f"password of `{user}` is not a string", f'write it in quotes, or better: "{user}": secret("samba_{user}")')
        elif is_secret_bad(password):
            err(spec.name, "samba_users", f"password of `{user}` missing or left at an example value", f"set a real password for {user}")
        elif "\n" in password or "\r" in password:
            err(spec.name, "samba_users", f"password of `{user}` contains a line break", "use a password on one line")
    shares = check_entries(err, spec.name, "samba_shares", data.get("samba_shares"), SHARES)
    share_names: set[str] = set()
    for share in shares:
        sname = share["name"]
        if not SHARE_NAME_RE.fullmatch(sname) or sname.lower() in SAMBA_RESERVED:
            err(spec.name, "samba_shares", f"share name `{sname!r}` is invalid", "use 1-80 letters, digits and ._- (not global, homes, printers)")
        elif sname.lower() in share_names:
            err(spec.name, "samba_shares", f"share `{sname}` is defined twice", "give each share a unique name (Samba ignores case)")
        share_names.add(sname.lower())
        check_relative(err, spec.name, "samba_shares", share["path"])
        for user in share.get("valid_users") or []:
            if users_known and user not in users:
                fix = f"add {user} to samba_users"
                fix = did_you_mean(user, users, fix, then=f" If not, {fix}")
                err(spec.name, "samba_shares", f"share `{sname}` names user `{user}` who is not in samba_users", fix)
        if share.get("guest_ok") and not share.get("read_only", False):
            err(spec.name, "samba_shares", f"share `{sname}` is writable by guests", "set read_only = True or guest_ok = False")
    if users_known and shares and not users and not all(s.get("guest_ok") for s in shares):
        err(spec.name, "samba_users", "shares are defined but no Samba user can log in", 'add samba_users = {"alice": secret("samba_alice")}')


LAYER = Layer(
    "samba",
    [
        Section("Samba"),
        Key("samba_enabled", flag(), True, "", DNAS),
        Key(
            "samba_workgroup",
            Kind(pattern=WORKGROUP_RE, bad="is not a workgroup name", fix="use 1-15 letters, digits and ._- (WORKGROUP is the usual one)"),
            "WORKGROUP",
            "",
            DNAS,
        ),
        Key(
            "samba_shares",
            Kind(list),
            [{"name": "data", "path": "data", "read_only": False, "valid_users": [], "guest_ok": False}],
            "Shares: name, path (relative to dnas_path), read_only, valid_users, guest_ok (off by default).\n"
            "Files are always created as dnas_user, so Syncthing and NFS see the same owner.",
            DNAS,
            SHARES,
        ),
        Key("samba_users", Kind(dict), {}, 'SECRET values: {"alice": "password"}. An empty valid_users list means every user listed here.', DNAS),
        Key(
            "samba_encrypt",
            Kind(choices=("desired", "required")),
            "desired",
            'SMB3 encryption: "desired" (used by every client that can) or "required" (others refused).\n'
            "Signing is always mandatory.",
            DNAS,
        ),
        Key(
            "samba_min_protocol",
            Kind(choices=samba_ops.PROTOCOLS),
            "SMB2_10",
            "The oldest SMB dialect served (never SMB1 or SMB 2.0.2); SMB3 for Windows 8 / macOS 10.10 and later only.",
            DNAS,
        ),
        Key("samba_default_shares", flag(), False, "Keep Debian's [homes], [printers] and [print$] shares (off: unavailable; printing is off either way).", DNAS),
        Key("samba_netbios", flag(), False, "NetBIOS (nmbd, port 139) for very old clients; off: SMB over TCP 445 only.", DNAS),
    ],
    reads=("dnas_path", "dnas_user", "dnas_uid", "dnas_gid"),
    check=check,
)

SambaSettings = LAYER.settings_class


def settings(host) -> SambaSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


@deploy("samba")
def samba(settings: SambaSettings, salt: str, prepared: list[str] | None = None) -> None:
    """
    Samba on one dnas node. `prepared`: the folders the dnas layer has just made (with the dnas
    owner); None when the layer runs on its own: then it creates the dnas owner when absent
    and every share folder itself. `salt` keys the fingerprints of the passwords kept on the
    node (homecloud/fingerprints.py).
    """
    dnas_path = settings.dnas_path
    dnas_user = settings.dnas_user
    if not settings.samba_enabled:
        # Samba turned off: stop serving our shares (the data, users and smbd itself stay).
        removed = samba_ops.config(
            name="Samba shares of homecloud removed",
            shares=[],
            users=[],
            force_user=dnas_user,
            force_group=dnas_user,
            present=False,
        )
        systemd.service(name="Reload Samba (shares removed)", service="smbd", reloaded=True, _if=removed.did_change)
        return

    users = dict(settings.samba_users)
    shares = [
        {
            "name": share["name"],
            "path": normpath(join(dnas_path, share["path"])),
            "read_only": bool(share.get("read_only", False)),
            "valid_users": list(share.get("valid_users") or []),
            "guest_ok": bool(share.get("guest_ok", False)),
        }
        for share in settings.samba_shares
    ]
    system.packages(name="Install Samba", packages=["samba"])
    if prepared is None:
        dnas_owner(dnas_user, settings.dnas_uid, settings.dnas_gid, dnas_path)
    owned_folders("Share folder", [s["path"] for s in shares if s["path"] not in (prepared or [])], dnas_user, acl_installed=prepared is not None)
    for user_name in sorted(users):
        samba_ops.user(name=f"Samba user {user_name}", user=user_name, password=HiddenValue(users[user_name]))
    if users:
        secrets_ops.fingerprints(
            name="Fingerprints of the Samba passwords (no secret stored)",
            salt=salt,
            secrets={f"samba_users.{u}": HiddenValue(users[u]) for u in sorted(users)},
        )
    samba_ops.config(
        name="Samba shares (checked with testparm)",
        shares=shares,
        users=sorted(users),
        force_user=dnas_user,
        force_group=dnas_user,
        workgroup=settings.samba_workgroup,
        encrypt=settings.samba_encrypt,
        min_protocol=settings.samba_min_protocol,
        default_shares=settings.samba_default_shares,
        netbios=settings.samba_netbios,
    )
    netbios = settings.samba_netbios
    system.services(name="NetBIOS name service (nmbd) is " + ("on" if netbios else "off"), services=["nmbd"], running=netbios, enabled=netbios)
    system.services(name="Samba is running", services=["smbd"])
    # A restart, not a reload: the ports smbd listens on (445 only without NetBIOS) change only
    # then. Decided from the node (smbd older than its files), so a run that failed after writing
    # the configuration is caught up by the next one.
    system.restarted_if_older(name="Samba runs its current configuration", service="smbd", paths=[samba_ops.SMB_CONF, samba_ops.SAMBA_INCLUDE])


def apply(state, host) -> None:
    """The layer on its own, on `host` when it is a dnas node."""
    from homecloud.fingerprints import salt_for

    if "dnas" in host.groups:
        samba(settings(host), salt=salt_for(state, host))
