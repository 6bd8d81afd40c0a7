"""
Samba on the dnas nodes: the shares of `samba_shares` (folders of dnas_path), the users of
`samba_users`, every file written as the dnas user.

    pyinfra -y inventories/home.py deploys/samba.py

Included by deploys/dnas.py after it created the dnas user and the data folder; it is also
safe on its own: it creates the dnas user (fixed uid/gid) only when absent and the share
folders with the dnas owner.
"""

from pyinfra import host, state

from homecloud.fingerprints import check_secrets, salt_for
from homecloud.model import check_state

check_state(state)
check_secrets(state)

from posixpath import join, normpath  # noqa: E402

from pyinfra.api import HiddenValue  # noqa: E402
from pyinfra.operations import files, systemd  # noqa: E402

from operations import samba, secrets, system  # noqa: E402

if "dnas" in host.groups:
    dnas_path = host.data.get("dnas_path")
    dnas_user = host.data.get("dnas_user")
    users = dict(host.data.get("samba_users") or {})
    shares = [
        {
            "name": share["name"],
            "path": normpath(join(dnas_path, share["path"])),
            "read_only": bool(share.get("read_only", False)),
            "valid_users": list(share.get("valid_users") or []),
            "guest_ok": bool(share.get("guest_ok", False)),
        }
        for share in host.data.get("samba_shares") or []
    ]

    # Set by deploys/dnas.py when it includes this layer: the dnas owner and these folders exist.
    prepared = host.data.get("dnas_prepared_folders")

    if host.data.get("samba_enabled"):
        system.packages(name="Install Samba", packages=["samba"])

        if prepared is None:
            system.account(
                name=f"dnas owner {dnas_user} (created only if absent)",
                user=dnas_user,
                uid=host.data.get("dnas_uid"),
                gid=host.data.get("dnas_gid"),
                home=dnas_path,
            )

        for share in (s for s in shares if s["path"] not in (prepared or [])):
            files.directory(
                name=f"Share folder {share['path']}",
                path=share["path"],
                user=dnas_user,
                group=dnas_user,
            )

        for user_name in sorted(users):
            samba.user(
                name=f"Samba user {user_name}",
                user=user_name,
                password=HiddenValue(users[user_name]),
            )
        if users:
            secrets.fingerprints(
                name="Fingerprints of the Samba passwords (no secret stored)",
                salt=salt_for(state, host),
                secrets={f"samba_users.{u}": HiddenValue(users[u]) for u in sorted(users)},
            )

        shares_config = samba.config(
            name="Samba shares (checked with testparm)",
            shares=shares,
            users=sorted(users),
            force_user=dnas_user,
            force_group=dnas_user,
            workgroup=host.data.get("samba_workgroup", "WORKGROUP"),
        )

        system.services(name="Samba is running", services=["smbd"])

        systemd.service(
            name="Reload Samba (configuration changed)",
            service="smbd",
            reloaded=True,
            _if=shares_config.did_change,
        )
    else:
        # Samba turned off: stop serving our shares (the data, users and smbd itself stay).
        removed = samba.config(
            name="Samba shares of homecloud removed",
            shares=[],
            users=[],
            force_user=dnas_user,
            force_group=dnas_user,
            present=False,
        )
        systemd.service(
            name="Reload Samba (shares removed)",
            service="smbd",
            reloaded=True,
            _if=removed.did_change,
        )
