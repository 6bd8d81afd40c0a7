"""
Layer 7, contacts and calendars between peers: on one dnas node (dav_sync_node), vdirsyncer
(Debian's package) pairs each user of dav_sync_users with their address books (CardDAV) and
calendars (CalDAV) on the DAV server (Nextcloud by default), as .vcf / .ics files in a folder of
a Syncthing-shared dnas folder. Laptops and phones that sync that folder get them without the
server; an edit to a file reaches the server at the next run.

- Runs as the dnas owner (the files are owned like every other dnas file), from a systemd timer
  every dav_sync_interval: `vdirsyncer discover` (new collections of the server get a folder),
  `metasync` (names, colours), `sync`.
- Layout: <dav_sync folder>/contacts/<address book>/<uid>.vcf and
  <folder>/calendars/<calendar>/<uid>.ics.
- Conflicts (the same item changed on both sides since the last run): dav_sync_conflict,
  "server wins" (vdirsyncer's `b wins`, the default) or "files win" (`a wins`); the losing
  version is overwritten. An item deleted on one side is deleted on the other.
- Credentials: the app password of each user sits in vdirsyncer's config,
  /etc/homecloud-vdirsyncer/config, 0600, owned by the dnas owner; never in a process argument.
  App passwords are made by each user in Nextcloud, not by the secret store: no fingerprint.
"""

from __future__ import annotations

import posixpath
import re
from posixpath import join, normpath

from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from homecloud.schema import Cluster, Entries, Key, Kind, Layer, Section, check_entries, check_relative, did_you_mean, is_secret_bad
from facts.syncthing import FIND_CONFIG
from homecloud import services as nc
from operations import system

from .common import folder_levels

DNAS = ("dnas",)
CONFIG = "/etc/homecloud-vdirsyncer/config"
STATUS_DIR = "/var/lib/homecloud-vdirsyncer"
UNIT = "homecloud-vdirsyncer"
RESCAN = "/usr/local/lib/homecloud/dav-rescan"
# After each vdirsyncer run: Syncthing rescans the .vcf/.ics folders at once (its file watcher
# missed files vdirsyncer wrote into folders it had just created: they then waited for the
# hourly full rescan). Arguments: the dnas user, then absolute folders.
RESCAN_TEXT = (
    "#!/usr/bin/python3\n# homecloud (homecloud/layers/davsync.py): ask Syncthing to rescan folders now."
    + FIND_CONFIG
    + """
from urllib.parse import quote
g, url = gui()
key = g.findtext("apikey")
for path in sys.argv[2:]:
    for f in E.parse(d + "/config.xml").getroot().findall("folder"):
        root = f.get("path").rstrip("/")
        if path == root or path.startswith(root + "/"):
            sub = path[len(root):].lstrip("/")
            api(url, key, "/rest/db/scan?folder=" + quote(f.get("id")) + ("&sub=" + quote(sub) if sub else ""), "POST", b"")
"""
)
CONFLICTS = {"server wins": "b wins", "files win": "a wins"}
INTERVAL_RE = re.compile(r"[1-9][0-9]*(s|min|h|d)")
URL_RE = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s\"'\\]*)?")
USERS = Entries(
    "user",
    "user",
    {"user": Kind(required=True), "password": Kind(required=True), "folder": Kind(required=True)},
    '{"user": "alice", "password": secret("dav_alice"), "folder": "data/dav/alice"}',
)


def check(err, cluster: Cluster) -> None:
    dnas = {s.name: s for s in cluster.group("dnas")}
    for spec in dnas.values():
        node = spec.data.get("dav_sync_node")
        if node is None:
            continue
        if node not in dnas:
            err(spec.name, "dav_sync_node", f"`{node}` is not a dnas node", did_you_mean(node, dnas, f"name one of the dnas nodes ({', '.join(dnas)})"))
            continue
        if spec.name != node:
            continue  # the rest is checked where it runs
        data = spec.data
        if data.get("syncthing_enabled") is not True:
            err(spec.name, "dav_sync_node", "Syncthing is off on this node: the files would reach no peer", "turn syncthing_enabled on or pick another dnas node")
        url = data.get("dav_sync_url")
        if url is None and not data.get("nextcloud_domain"):
            err(spec.name, "dav_sync_url", "missing, and there is no nextcloud_domain to derive it from", "give the DAV server's URL, e.g. https://cloud.example.org/remote.php/dav/")
        elif url is not None and not (isinstance(url, str) and URL_RE.fullmatch(url)):
            err(spec.name, "dav_sync_url", f"`{url!r}` is not an http(s) URL", "write it like https://cloud.example.org/remote.php/dav/")
        interval = data.get("dav_sync_interval")
        if isinstance(interval, str) and not INTERVAL_RE.fullmatch(interval):
            err(spec.name, "dav_sync_interval", f"`{interval}` is not a time span", "a number and s, min, h or d, e.g. 15min")
        folders = [f.get("path") for f in data.get("syncthing_folders") or [] if isinstance(f, dict) and isinstance(f.get("path"), str)]
        users: set[str] = set()
        for entry in check_entries(err, spec.name, "dav_sync_users", data.get("dav_sync_users"), USERS):
            user = entry["user"]
            if not nc.NC_NAME_RE.fullmatch(user) or not re.fullmatch(r"[A-Za-z0-9_.-]+", user):
                err(spec.name, "dav_sync_users", f"`{user!r}` is not a user name vdirsyncer can use", "letters, digits and _.-")
            elif user in users:
                err(spec.name, "dav_sync_users", f"user `{user}` is listed twice", "list each user once")
            users.add(user)
            if is_secret_bad(entry["password"]):
                err(spec.name, "dav_sync_users", f"the password of `{user}` is missing or an example value", f"create an app password for {user} in Nextcloud (Settings > Security) and give it")
            elif any(c in entry["password"] for c in "\"\\\n\r"):
                err(spec.name, "dav_sync_users", f"the password of `{user}` holds a quote, backslash or line break", "use an app password (letters, digits and dashes)")
            check_relative(err, spec.name, "dav_sync_users", entry["folder"])
            if not any(nc.relative_inside(str(entry["folder"]), f) for f in folders):
                err(spec.name, "dav_sync_users", f"folder `{entry['folder']}` of `{user}` is in no Syncthing folder", f"put it inside one of {', '.join(folders) or 'the syncthing_folders'} (e.g. {folders[0] if folders else 'data'}/dav/{user})")


LAYER = Layer(
    "davsync",
    [
        Section("Contacts and calendars as files (vdirsyncer; deploys/davsync.py)"),
        Key("dav_sync_node", Kind(optional=True), None, "The dnas node running vdirsyncer (one; None: off).", DNAS),
        Key("dav_sync_url", Kind(optional=True), None, "The DAV server; None: https://<nextcloud_domain>/remote.php/dav/.", DNAS),
        Key("dav_sync_verify", Kind(bool), True, "Check the server's TLS certificate (False for Traefik's self-signed default one).", DNAS),
        Key(
            "dav_sync_users",
            Kind(list),
            [],
            "Whose contacts and calendars, with an app password (SECRET), into which folder (relative to\n"
            "dnas_path, inside a Syncthing folder):\n"
            '[{"user": "alice", "password": secret("dav_alice"), "folder": "data/dav/alice"}]',
            DNAS,
            USERS,
        ),
        Key("dav_sync_interval", Kind(), "15min", "How often vdirsyncer runs (systemd time span).", DNAS),
        Key(
            "dav_sync_conflict",
            Kind(choices=tuple(CONFLICTS)),
            "server wins",
            'An item changed on both sides since the last run: "server wins" or "files win" (the other\nversion is overwritten).',
            DNAS,
        ),
    ],
    reads=("dnas_path", "dnas_user", "nextcloud_domain"),
    check=check,
)

DavsyncSettings = LAYER.settings_class


def settings(host) -> DavsyncSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(s: DavsyncSettings) -> str:
    """vdirsyncer's config: per user, a pair for the address books and one for the calendars."""
    url = s.dav_sync_url or f"https://{s.nextcloud_domain}/remote.php/dav/"
    lines = [
        "# Managed by homecloud (homecloud/layers/davsync.py). Holds app passwords: 0600.",
        "[general]",
        f"status_path = {_quote(STATUS_DIR + '/status/')}",
        "",
    ]
    for entry in s.dav_sync_users:
        user = entry["user"]
        base = normpath(join(s.dnas_path, entry["folder"]))
        for kind, dav, ext in (("contacts", "carddav", ".vcf"), ("calendars", "caldav", ".ics")):
            name = f"{user}_{kind}"
            lines += [
                f"[pair {name}]",
                f'a = "{name}_files"',
                f'b = "{name}_server"',
                '# Every collection of the server gets a folder here.',
                'collections = ["from b"]',
                f"conflict_resolution = {_quote(CONFLICTS[s.dav_sync_conflict])}",
                'metadata = ["displayname", "color"]' if kind == "calendars" else 'metadata = ["displayname"]',
                "",
                f"[storage {name}_files]",
                'type = "filesystem"',
                f"path = {_quote(join(base, kind) + '/')}",
                f"fileext = {_quote(ext)}",
                "",
                f"[storage {name}_server]",
                f"type = {_quote(dav)}",
                f"url = {_quote(url)}",
                f"username = {_quote(user)}",
                f"password = {_quote(entry['password'])}",
            ]
            if not s.dav_sync_verify:
                lines.append("verify = false")
            lines.append("")
    return "\n".join(lines)


def render_service(user: str, folders: list[str] | None = None) -> str:
    return (
        "# Managed by homecloud (homecloud/layers/davsync.py).\n"
        "[Unit]\n"
        "Description=homecloud: contacts and calendars <-> .vcf/.ics files (vdirsyncer)\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        "[Service]\nType=oneshot\n"
        # The NAS's modes: files 0660, folders 0770 at most (the dnas group only).
        f"User={user}\nGroup={user}\nUMask=0007\n"
        f"Environment=VDIRSYNCER_CONFIG={CONFIG}\n"
        # discover asks before creating a folder for a new collection of the server: yes.
        "ExecStart=/bin/sh -c 'yes | vdirsyncer discover'\n"
        "ExecStart=/usr/bin/vdirsyncer metasync\n"
        "ExecStart=/usr/bin/vdirsyncer sync\n"
        # A Syncthing that does not answer only delays the transfer until its own rescan.
        + (f"ExecStartPost=-/usr/bin/python3 {RESCAN} {user} {' '.join(chr(34) + f + chr(34) for f in folders)}\n" if folders else "")
        + "TimeoutStartSec=30min\n"
        "Nice=10\n"
    )


def render_timer(interval: str) -> str:
    return (
        "# Managed by homecloud (homecloud/layers/davsync.py).\n"
        "[Unit]\nDescription=homecloud: run vdirsyncer regularly\n\n"
        f"[Timer]\nOnBootSec=2min\nOnUnitInactiveSec={interval}\nPersistent=false\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )


@deploy("davsync")
def davsync(settings: DavsyncSettings, present: bool) -> None:
    """vdirsyncer on the dav_sync node (`present`), or nothing of it on any other dnas node."""
    user = settings.dnas_user
    service, timer = f"/etc/systemd/system/{UNIT}.service", f"/etc/systemd/system/{UNIT}.timer"
    if not present or not settings.dav_sync_users:
        system.services(name="No vdirsyncer timer", services=[f"{UNIT}.timer"], running=False, enabled=False)
        removed = [
            system.text_file(name=f"No {path}", path=path, text="", present=False)
            for path in (timer, service, CONFIG, RESCAN)
        ]
        systemd.daemon_reload(name="systemd forgets vdirsyncer's units", _if=any_changed(*removed[:2]))
        return
    system.packages(name="Install vdirsyncer", packages=["vdirsyncer"])
    folders: list[str] = []
    for entry in settings.dav_sync_users:
        # Every level below dnas_path is the dnas owner's (Syncthing writes there as that user).
        folders += folder_levels(settings.dnas_path, entry["folder"])
        folders += [normpath(join(settings.dnas_path, entry["folder"], kind)) for kind in ("contacts", "calendars")]
    folders = list(dict.fromkeys(folders))
    # /etc/homecloud is root's only (fingerprints): vdirsyncer's config has a folder of its own.
    for path in (posixpath.dirname(CONFIG), STATUS_DIR):
        files.directory(name=f"vdirsyncer folder {path} (0700, {user})", path=path, user=user, group=user, mode="700")
    for path in folders:
        files.directory(name=f"vdirsyncer folder {path} owned by {user}", path=path, user=user, group=user)
    system.text_file(name=f"vdirsyncer config {CONFIG} (0600, app passwords)", path=CONFIG, text=render_config(settings), mode="600", user=user, group=user, secret=True)
    system.text_file(name=f"Syncthing rescan helper {RESCAN}", path=RESCAN, text=RESCAN_TEXT, mode="755")
    units = [
        system.text_file(name=f"{UNIT}.service", path=service, text=render_service(user, [normpath(join(settings.dnas_path, e["folder"])) for e in settings.dav_sync_users])),
        system.text_file(name=f"{UNIT}.timer every {settings.dav_sync_interval}", path=timer, text=render_timer(settings.dav_sync_interval)),
    ]
    systemd.daemon_reload(name="systemd reads vdirsyncer's units", _if=any_changed(*units))
    system.services(name=f"{UNIT}.timer enabled and running", services=[f"{UNIT}.timer"])


def apply(state, host) -> None:
    """The layer on every dnas node: vdirsyncer where dav_sync_node names it, removed elsewhere."""
    if "dnas" in host.groups:
        config = settings(host)
        davsync(config, present=config.dav_sync_node == host.name)
