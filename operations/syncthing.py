"""
Syncthing run as a system user (``syncthing@<user>``): where the package comes from, the
service, its GUI, and the devices and folders it shares.

Changes go through Syncthing's REST API by a small helper program installed on the node
(``/usr/local/lib/homecloud/syncthing-api``): it reads the API key from the user's config.xml
itself, so the key never leaves the node nor appears in a command line, and it merges each
change into the configuration Syncthing holds at that moment and saves it in one request, so
devices and folders added by hand are kept and a new peer gets its device and its folders at
once (before it connects). Whether anything is to change is decided from the ``syncthing.Node``
fact.
"""

from __future__ import annotations

import json
import warnings

from pyinfra import host, state
from pyinfra.api import HiddenValue, OperationError, QuoteString, StringCommand, operation
from pyinfra.operations import files

from facts.system import FileStates
from facts.syncthing import API_CLIENT, DeviceId, Node
from operations.system import put_texts, unit_states, upload_private

CLIENT_PATH = "/usr/local/lib/homecloud/syncthing-api"
KEYRING = "/etc/apt/keyrings/syncthing-archive-keyring.gpg"
KEY_URL = "https://syncthing.net/release-key.gpg"
SOURCES_LIST = "/etc/apt/sources.list.d/syncthing.list"
PREFERENCES = "/etc/apt/preferences.d/syncthing.pref"
LOOPBACK = ("127.", "localhost:", "[::1]:")


def _client(user: str, action: str, argument: str | None = None) -> StringCommand:
    parts: list = ["python3", CLIENT_PATH, QuoteString(user), action]
    if argument is not None:
        parts.append(QuoteString(argument))
    return StringCommand(*parts)


def _edit(user: str, edit: dict) -> StringCommand:
    return _client(user, "edit", json.dumps(edit, sort_keys=True, separators=(",", ":")))


def _node(user: str) -> dict:
    """The Node fact; a node whose Syncthing has not started yet is an error only at execute time."""
    node = host.get_fact(Node, user=user)
    if not node and state.is_executing:
        raise OperationError(
            f"{host.name}: Syncthing of user {user} has no configuration yet. Fix: start it first "
            f"(syncthing.service, or systemctl start syncthing@{user})."
        )
    return node or {}


@operation()
def repository(channel: str = "stable", present: bool = True):
    """
    Use Syncthing's own signed apt repository (apt.syncthing.net) instead of Debian's package.

    + channel: the repository channel (``stable``; Syncthing 2.x is published as ``stable-v2``)
    + present: False removes the repository (the installed package stays)

    The key is downloaded once into ``/etc/apt/keyrings`` and only this repository trusts it
    (``signed-by``); a pin makes apt prefer its packages over Debian's. ``apt-get update`` runs
    when anything changed.

    **Example:**

    .. code:: python

        syncthing.repository(name="Syncthing's apt repository", channel="stable")
    """
    source = f"deb [signed-by={KEYRING}] https://apt.syncthing.net/ syncthing {channel}\n"
    pin = "# Managed by homecloud: prefer Syncthing's own packages.\nPackage: *\nPin: origin apt.syncthing.net\nPin-Priority: 990\n"
    changes: list = []
    if present:
        changes += files.directory._inner(path="/etc/apt/keyrings", mode="755")
        changes += files.download._inner(src=KEY_URL, dest=KEYRING, mode="644")
        # Both are homecloud's own and regenerated from the channel: no backup.
        written = put_texts([{"dest": SOURCES_LIST, "text": source}, {"dest": PREFERENCES, "text": pin}])
        changes += written[SOURCES_LIST] + written[PREFERENCES]
    else:
        states = host.get_fact(FileStates, paths=[SOURCES_LIST, PREFERENCES, KEYRING])
        changes += [StringCommand("rm -f", QuoteString(path)) for path in (SOURCES_LIST, PREFERENCES, KEYRING) if states.get(path)]
    if changes:
        yield from changes
        yield "apt-get update -qq"
    else:
        host.noop("Syncthing's apt repository is " + ("configured" if present else "not configured"))


@operation()
def service(user: str, present: bool = True):
    """
    Run Syncthing as ``syncthing@<user>`` (enabled at boot) and wait until its API answers.

    + user: the system user Syncthing runs as (its config is in that user's home)
    + present: False stops and disables the service (its config and the data stay)

    A drop-in sets ``STNODEFAULTFOLDER=1`` so the first start creates no "Default Folder"
    (~/Sync), and ``UMask=0007``: nothing it writes is readable by other accounts. The REST helper this module's operations use is installed with it. The service
    restarts only when the drop-in changed.

    **Example:**

    .. code:: python

        syncthing.service(name="Syncthing for the NAS user", user="dnas")
    """
    unit = f"syncthing@{user}.service"
    dropin = f"/etc/systemd/system/{unit}.d/homecloud.conf"
    states = unit_states([unit])[unit]
    running, is_enabled = states["running"], states["enabled"]

    if not present:
        commands: list = []
        if running:
            commands.append(StringCommand("systemctl stop", QuoteString(unit)))
        if is_enabled:
            commands.append(StringCommand("systemctl disable", QuoteString(unit)))
        removed = list(files.file._inner(path=dropin, present=False))
        if removed:
            commands += removed
            commands.append("systemctl daemon-reload")
        if commands:
            yield from commands
        else:
            host.noop(f"{unit} is not running")
        return

    written = put_texts(
        [
            {"dest": CLIENT_PATH, "text": API_CLIENT, "mode": "755"},
            {
                "dest": dropin,
                "text": "# Managed by homecloud (operations/syncthing.py).\n"
                "[Service]\n"
                "# No \"Default Folder\" (~/Sync) on the first start.\n"
                "Environment=STNODEFAULTFOLDER=1\n"
                "# What it writes is for the dnas group only: files 0660, folders 0770.\n"
                "UMask=0007\n",
            },
        ]
    )
    client, conf = written[CLIENT_PATH], written[dropin]
    yield from client
    yield from conf
    if conf:
        yield "systemctl daemon-reload"
    if not is_enabled:
        yield StringCommand("systemctl enable", QuoteString(unit))
    if not running:
        yield StringCommand("systemctl start", QuoteString(unit))
    elif conf:
        yield StringCommand("systemctl restart", QuoteString(unit))
    if not running or conf:
        yield _client(user, "wait")
    if not (client or conf or not is_enabled or not running):
        host.noop(f"{unit} is running")


def _password_matches(password: str, hashed: str) -> bool | None:
    """Whether a bcrypt hash (as Syncthing stores it) is of this password; None: cannot tell.

    bcrypt is ~75 ms of CPU on purpose: it runs in gevent's thread pool (bcrypt releases the
    GIL), so the other hosts of the run go on meanwhile and the dnas nodes check in parallel.
    """
    try:
        import bcrypt  # type: ignore[import-not-found]
        from gevent import get_hub

        def check() -> bool:
            try:
                return bcrypt.checkpw(password.encode(), hashed.encode())
            except ValueError:  # not a bcrypt hash (gevent would print the exception of a pool task)
                return False

        return get_hub().threadpool.apply(check)
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import crypt  # deprecated, gone in Python 3.13

        result = crypt.crypt(password, hashed)
        return None if result is None else result == hashed
    except (ImportError, OSError):
        return None


@operation()
def gui(
    user: str,
    address: str = "127.0.0.1:8384",
    password: str | HiddenValue | None = None,
    gui_user: str = "homecloud",
):
    """
    Bind Syncthing's GUI / REST API to an address; beyond loopback only with a password and TLS.

    + user: the system user Syncthing runs as
    + address: ``host:port`` the GUI listens on
    + password: the GUI password (required unless the address is loopback; a ``HiddenValue``
      keeps it out of pyinfra's output); it reaches the node in a file of mode 0600, never on a
      command line; Syncthing stores a bcrypt hash
    + gui_user: the GUI user name that goes with the password

    A password already set is compared with its bcrypt hash on the controller (``bcrypt`` or
    ``crypt``); where neither can check it, it is left as it is.

    **Example:**

    .. code:: python

        syncthing.gui(
            name="Syncthing GUI on the LAN",
            user="dnas",
            address="0.0.0.0:8384",
            password=HiddenValue(secret("syncthing_gui")),
        )
    """
    password = _gui_password(address, password)
    commands, noop = _gui_commands(_node(user), user, address, password, gui_user)
    yield from commands
    if not commands:
        host.noop(noop)


def _gui_password(address: str, password: str | HiddenValue | None) -> str | None:
    """The clear GUI password; refuses a GUI beyond loopback without one."""
    if isinstance(password, HiddenValue):
        password = password.unmask()
    if not address.startswith(LOOPBACK) and not password:
        raise OperationError(
            f"{host.name}: the Syncthing GUI would listen on {address} without a password. "
            "Fix: set a password (syncthing_gui_password) or keep it on 127.0.0.1:8384."
        )
    return password


def _gui_commands(node: dict, user: str, address: str, password: str | None, gui_user: str) -> tuple[list, str]:
    """The commands of syncthing.gui for the Node fact `node`, and its no-op message."""
    loopback = address.startswith(LOOPBACK)
    current = node.get("gui") or {}
    change: dict = {}
    if current.get("address") != address:
        change["address"] = address
    if not loopback and not current.get("tls"):
        change["useTLS"] = True
    secret_change: dict = {}
    if password:
        if current.get("user") != gui_user:
            secret_change["user"] = gui_user
        hashed = current.get("password_hash") or ""
        if not hashed or _password_matches(password, hashed) is False:
            secret_change["user"] = gui_user
            secret_change["password"] = password
    if not change and not secret_change:
        return [], f"Syncthing GUI of {user} listens on {address}"
    if "password" not in secret_change:
        return [_edit(user, {"gui": {**change, **secret_change}})], ""
    temp = host.get_temp_filename(f"syncthing-gui-{user}")
    return [
        *upload_private(json.dumps({"gui": {**change, **secret_change}}, sort_keys=True), temp),
        StringCommand(
            "python3", CLIENT_PATH, QuoteString(user), "edit", QuoteString("@" + temp), "; rc=$?; rm -f", QuoteString(temp), "; exit $rc"
        ),
    ], ""


def _options_commands(node: dict, user: str, internet: bool | None) -> tuple[list, str]:
    """The options edit of syncthing.configure for the Node fact `node`, and its no-op message.
    internet=False: no global discovery, relays or NAT traversal (port mapping; STUN runs only
    with it); True: those on, for devices outside the LAN. Crash and usage reports: always off."""
    if internet is None:
        return [], ""
    wanted = {
        "globalAnnounceEnabled": internet,
        "relaysEnabled": internet,
        "natEnabled": internet,
        "crashReportingEnabled": False,
        "urAccepted": -1,  # usage reporting declined for good (never asked again)
    }
    current = node.get("options") or {}
    as_xml = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in wanted.items()}
    change = {key: value for key, value in wanted.items() if current.get(key) != as_xml[key]}
    if change:
        return [_edit(user, {"options": change})], ""
    return [], f"Syncthing of {user}: global discovery, relays and NAT traversal {'on' if internet else 'off'}, no crash or usage reports"


@operation()
def remove_default_folder(user: str):
    """
    Remove Syncthing's "Default Folder" (~/Sync), but only when it is untouched.

    + user: the system user Syncthing runs as

    Untouched means: id ``default``, label "Default Folder", path ``~/Sync``, shared with no
    other device and holding no file. Anything else is kept (somebody uses it). Only the
    folder's entry is removed; the (empty) directory stays.

    **Example:**

    .. code:: python

        syncthing.remove_default_folder(name="No default folder", user="dnas")
    """
    commands, noop = _default_folder_commands(_node(user), user)
    yield from commands
    if not commands:
        host.noop(noop)


def _default_folder_commands(node: dict, user: str) -> tuple[list, str]:
    """The commands of syncthing.remove_default_folder for the Node fact `node`, and its no-op message."""
    folder = (node.get("folders") or {}).get("default")
    if not folder:
        return [], f"Syncthing of {user} has no default folder"
    untouched = (
        folder.get("label") == "Default Folder"
        and folder.get("path", "").rstrip("/") == f"{node.get('home')}/Sync"
        and [d for d in folder.get("devices", []) if d != node.get("device_id")] == []
        and folder.get("empty")
    )
    if not untouched:
        return [], f"the default folder of {user}'s Syncthing is in use: kept"
    return [_edit(user, {"remove_folders": ["default"]})], ""


def _device_entry(device_id: str, device_name: str | None, addresses: list[str] | None) -> dict:
    entry: dict = {"deviceID": device_id}
    if device_name is not None:
        entry["name"] = device_name
    if addresses is not None:
        entry["addresses"] = list(addresses)
    return entry


def _device_differs(node: dict, entry: dict) -> bool:
    current = (node.get("devices") or {}).get(entry["deviceID"])
    if current is None:
        return True
    return any(current.get(key) != value for key, value in entry.items() if key != "deviceID")


def _folder_change(node: dict, folder_id: str, path: str, label: str | None, devices: list[str]) -> dict | None:
    """The folder edit needed (None: nothing to do). Raises when the folder is elsewhere."""
    current = (node.get("folders") or {}).get(folder_id)
    if current is None:
        return {"id": folder_id, "label": label or folder_id, "path": path, "type": "sendreceive", "devices": sorted(devices)}
    if current.get("path", "").rstrip("/") != path.rstrip("/"):
        raise OperationError(
            f"{host.name}: Syncthing folder {folder_id} is at {current.get('path')}, not {path}. homecloud never "
            "moves a folder. Fix: move it in the Syncthing GUI (or remove it there), or use another folder id."
        )
    change: dict = {}
    if label is not None and current.get("label") != label:
        change["label"] = label
    missing = sorted(set(devices) - set(current.get("devices") or []))
    if missing:
        change["devices"] = missing
    return {"id": folder_id, **change} if change else None


@operation()
def device(
    user: str,
    device_id: str,
    device_name: str | None = None,
    addresses: list[str] | None = None,
    present: bool = True,
):
    """
    Add, update or remove a remote device (another node, a phone, a laptop).

    + user: the system user Syncthing runs as
    + device_id: the device's Syncthing ID
    + device_name: its name (kept as it is when not given)
    + addresses: how to reach it, e.g. ``["tcp://192.168.1.12:22000", "dynamic"]`` (new devices
      get ``["dynamic"]`` when not given)
    + present: False removes the device (and its share of every folder; no file is deleted)

    **Example:**

    .. code:: python

        syncthing.device(
            name="Phone",
            user="dnas",
            device_id="P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2",
            device_name="phone",
        )
    """
    node = _node(user)
    if device_id == node.get("device_id"):
        host.noop(f"{device_id} is this node itself")
        return
    known = device_id in (node.get("devices") or {})
    if not present:
        if known:
            yield _edit(user, {"remove_devices": [device_id]})
        else:
            host.noop(f"Syncthing of {user} does not know device {device_id}")
        return
    if not known and addresses is None:
        addresses = ["dynamic"]
    entry = _device_entry(device_id, device_name, addresses)
    if _device_differs(node, entry):
        yield _edit(user, {"devices": [entry]})
    else:
        host.noop(f"Syncthing of {user} knows device {device_name or device_id}")


@operation()
def folder(
    user: str,
    folder_id: str,
    path: str,
    label: str | None = None,
    devices: list[str] | None = None,
    present: bool = True,
):
    """
    Add a folder shared with devices, or add devices to it; remove it with present=False.

    + user: the system user Syncthing runs as
    + folder_id: the folder ID (the same on every device sharing it)
    + path: where it lives on this node (absolute)
    + label: its label
    + devices: device IDs it is shared with; devices it already has stay (added by hand)
    + present: False removes the folder from Syncthing; its files stay on disk

    A folder that exists at another path is an error: homecloud never moves a folder.

    **Example:**

    .. code:: python

        syncthing.folder(
            name="Share the data folder",
            user="dnas",
            folder_id="homecloud-data",
            path="/srv/dnas/data",
            label="homecloud data",
            devices=["P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2"],
        )
    """
    node = _node(user)
    if not present:
        if folder_id in (node.get("folders") or {}):
            yield _edit(user, {"remove_folders": [folder_id]})
        else:
            host.noop(f"Syncthing of {user} has no folder {folder_id}")
        return
    unknown = sorted(set(devices or []) - set(node.get("devices") or {}))
    if unknown and node:
        raise OperationError(
            f"{host.name}: folder {folder_id} is to be shared with unknown device(s) {', '.join(unknown)}. "
            "Fix: add them first (syncthing.device) or use syncthing.mesh."
        )
    change = _folder_change(node, folder_id, path, label, list(devices or []))
    if change:
        yield _edit(user, {"folders": [change]})
    else:
        host.noop(f"Syncthing folder {folder_id} is shared as wanted")


@operation()
def mesh(
    user: str,
    peers: dict[str, str] | None = None,
    folders: list[dict] | None = None,
    devices: list[dict] | None = None,
    port: int = 22000,
    sudo: bool = False,
):
    """
    Peer this node with other nodes and devices and share folders among them, in one change.

    + user: the system user Syncthing runs as (the same on every peer)
    + peers: inventory host name -> LAN address of each peer node; each peer's device ID is
      read from that host (``syncthing.DeviceId`` fact) when the operation runs. This host
      itself may be listed (it is skipped).
    + folders: ``[{"id": ..., "label": ..., "path": <absolute path>}]`` shared with every peer
    + devices: other devices (phones, laptops): ``[{"name": ..., "id": ..., "folders": [ids]}]``
    + port: the Syncthing port of the peers
    + sudo: read the peers' facts with sudo

    Devices and folders are merged into what the node has (nothing it has is removed) and
    saved in one configuration change, so a new peer has its folders before it connects.

    **Example:**

    .. code:: python

        syncthing.mesh(
            name="Syncthing full mesh",
            user="dnas",
            peers={"pi1": "192.168.1.11", "pi2": "192.168.1.12"},
            folders=[{"id": "homecloud-data", "label": "homecloud data", "path": "/srv/dnas/data"}],
            devices=[{"name": "phone", "id": "P56IOI7-...", "folders": ["homecloud-data"]}],
        )
    """
    commands, noop = _mesh_commands(_node(user), user, peers, folders, devices, port, sudo)
    yield from commands
    if not commands:
        host.noop(noop)


def _mesh_commands(
    node: dict,
    user: str,
    peers: dict[str, str] | None,
    folders: list[dict] | None,
    devices: list[dict] | None,
    port: int,
    sudo: bool,
) -> tuple[list, str]:
    """The commands of syncthing.mesh for the Node fact `node`, and its no-op message."""
    own = node.get("device_id")
    wanted: list[dict] = []
    peer_ids: list[str] = []
    pending: list[str] = []
    for peer_name, peer_address in (peers or {}).items():
        if peer_name == host.name:
            continue
        peer = state.inventory.get_host(peer_name, None)
        if peer is None:
            raise OperationError(f"{host.name}: Syncthing peer {peer_name} is not a host of the inventory")
        peer_id = peer.get_fact(DeviceId, user=user, _sudo=sudo)
        if not peer_id:
            if state.is_executing:
                raise OperationError(
                    f"{host.name}: peer {peer_name} has no Syncthing device ID (syncthing@{user} never ran there). "
                    "Fix: look at the errors of that host; run the deploy again once it is up."
                )
            pending.append(peer_name)
            continue
        if peer_id == own:
            continue
        peer_ids.append(peer_id)
        wanted.append(_device_entry(peer_id, peer_name, [f"tcp://{peer_address}:{port}", "dynamic"]))
    for other in devices or []:
        entry = {"deviceID": other["id"], "name": other["name"]}
        if other["id"] not in (node.get("devices") or {}):
            entry["addresses"] = list(other.get("addresses") or ["dynamic"])
        elif other.get("addresses"):
            entry["addresses"] = list(other["addresses"])
        wanted.append(entry)

    edit: dict = {}
    changed_devices = [entry for entry in wanted if _device_differs(node, entry)]
    if changed_devices:
        edit["devices"] = changed_devices
    changed_folders = []
    for shared in folders or []:
        members = peer_ids + [other["id"] for other in devices or [] if shared["id"] in (other.get("folders") or [])]
        change = _folder_change(node, shared["id"], shared["path"], shared.get("label"), members)
        if change:
            changed_folders.append(change)
    if changed_folders:
        edit["folders"] = changed_folders
    if edit:
        return [_edit(user, edit)], ""
    waiting = f" (device IDs of {', '.join(pending)} are read when the deploy runs)" if pending else ""
    return [], f"Syncthing of {user} is peered and shares its folders{waiting}"


@operation()
def configure(
    user: str,
    gui_address: str = "127.0.0.1:8384",
    gui_password: str | HiddenValue | None = None,
    gui_user: str = "homecloud",
    peers: dict[str, str] | None = None,
    folders: list[dict] | None = None,
    devices: list[dict] | None = None,
    port: int = 22000,
    sudo: bool = False,
    internet: bool | None = None,
):
    """
    What ``remove_default_folder``, ``gui`` and ``mesh`` do, in that order, decided from one
    read of the ``syncthing.Node`` fact instead of three; then Syncthing's internet options.

    + user: the system user Syncthing runs as
    + gui_address: ``host:port`` the GUI listens on (see ``gui``)
    + gui_password: the GUI password (see ``gui``)
    + gui_user: the GUI user name that goes with the password
    + peers: inventory host name -> LAN address of each peer node (see ``mesh``)
    + folders: folders shared with every peer (see ``mesh``)
    + devices: other devices (see ``mesh``)
    + port: the Syncthing port of the peers
    + sudo: read the peers' facts with sudo
    + internet: False turns global discovery, relays and NAT traversal (UPnP/NAT-PMP port
      mapping, and STUN with it) off; True on (a phone outside the home finds the nodes). Crash
      and usage reporting are turned off either way. None leaves these options as they are.

    Each part is a change of its own (the REST helper merges it into the configuration
    Syncthing holds when it runs), exactly as the three operations would make them.

    **Example:**

    .. code:: python

        syncthing.configure(
            name="Syncthing: GUI, no default folder, full mesh",
            user="dnas",
            peers={"pi1": "192.168.1.11", "pi2": "192.168.1.12"},
            folders=[{"id": "homecloud-data", "label": "homecloud data", "path": "/srv/dnas/data"}],
        )
    """
    password = _gui_password(gui_address, gui_password)
    node = _node(user)
    parts = [
        _default_folder_commands(node, user),
        _gui_commands(node, user, gui_address, password, gui_user),
        _mesh_commands(node, user, peers, folders, devices, port, sudo),
        _options_commands(node, user, internet),
    ]
    commands = [command for part, _ in parts for command in part]
    yield from commands
    if not commands:
        host.noop("; ".join(noop for _, noop in parts if noop))
