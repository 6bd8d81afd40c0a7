"""
Layer 4, the decentralized NAS on the hosts of the `dnas` group: the data disk and folder, its
owner, Syncthing between the dnas nodes; Samba (layers/samba.py) and NFS (layers/nfs.py) serve
the same folder.
"""

from __future__ import annotations

import re
from posixpath import join, normpath

from pyinfra.api import HiddenValue, deploy

from homecloud.cluster import address, group_hosts
from operations import secrets as secrets_ops, storage, syncthing, system

from .common import data_disk, dnas_owner, owned_folders
from . import nfs as nfs_layer, samba as samba_layer
from .nfs import NfsSettings, nfs
from .samba import SambaSettings, samba
from homecloud.schema import (
    DEVICE_SPEC_RE,
    USER_KIND,
    Cluster,
    Entries,
    Key,
    Kind,
    Layer,
    Section,
    check_blank_device,
    check_device_label,
    check_entries,
    check_outside_k3s,
    check_relative,
    count,
    did_you_mean,
    flag,
    is_secret_bad,
    thawed,
)

DNAS = ("dnas",)
# Syncthing device IDs: 8 groups of 7 base32 characters.
SYNCTHING_ID_RE = re.compile(r"[A-Z2-7]{7}(-[A-Z2-7]{7}){7}")
FOLDER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

FOLDERS = Entries(
    "folder",
    "id",
    {"id": Kind(required=True), "label": Kind(), "path": Kind(required=True)},
    '{"id": "photos", "label": "Photos", "path": "photos"}',
)
DEVICES = Entries(
    "device",
    "name",
    {"name": Kind(required=True), "id": Kind(required=True), "folders": Kind(list), "addresses": Kind(list)},
    '{"name": "phone", "id": "ABCDEFG-...", "folders": ["homecloud-data"]}',
)


def check(err, cluster: Cluster) -> None:
    for spec in cluster.group("dnas"):
        data = spec.data
        path = data.get("dnas_path")
        if isinstance(path, str) and (not path.startswith("/") or path.rstrip("/") in ("", "/boot", "/etc", "/usr", "/var", "/home", "/root")):
            err(spec.name, "dnas_path", f"`{path!r}` is not a usable data folder", "use an absolute path of its own, e.g. /srv/dnas")
        device = data.get("dnas_device")
        if isinstance(device, str) and not DEVICE_SPEC_RE.fullmatch(device):
            err(
                spec.name,
                "dnas_device",
                f"`{device}` may name another disk after a reboot (USB order changes)",
                "use UUID=... or LABEL=... as `blkid` shows it, or /dev/disk/by-id/...",
            )
        if data.get("dnas_format") is True and device is None:
            err(spec.name, "dnas_format", "True but no dnas_device is given", "set dnas_device = 'LABEL=...' or turn dnas_format off")
        if data.get("dnas_fstype") not in ("ext4", "xfs", "btrfs"):
            err(spec.name, "dnas_fstype", f"`{data.get('dnas_fstype')!r}` is not supported", "use ext4, xfs or btrfs")
        check_blank_device(err, spec, "dnas")
        check_device_label(err, spec, "dnas")
        check_outside_k3s(err, spec.name, "dnas_path", path)
        if data.get("syncthing_enabled") is True:
            _check_syncthing(err, spec)


def _check_syncthing(err, spec) -> None:
    data = spec.data
    folder_ids: set[str] = set()
    for folder in check_entries(err, spec.name, "syncthing_folders", data.get("syncthing_folders"), FOLDERS):
        fid = folder["id"]
        if not FOLDER_ID_RE.fullmatch(fid):
            err(spec.name, "syncthing_folders", f"folder id `{fid!r}` is invalid", "use letters, digits and ._- (e.g. photos)")
        elif fid in folder_ids:
            err(spec.name, "syncthing_folders", f"folder id `{fid}` is listed twice", "give each folder a unique id")
        folder_ids.add(fid)
        check_relative(err, spec.name, "syncthing_folders", folder["path"])
    for device_entry in check_entries(err, spec.name, "syncthing_devices", data.get("syncthing_devices"), DEVICES):
        did = device_entry["id"]
        if not SYNCTHING_ID_RE.fullmatch(did):
            err(spec.name, "syncthing_devices", f"device id `{did!r}` is not a Syncthing device ID", "copy it from the device (Actions > Show ID): 8 groups of 7 characters")
        for fid in device_entry.get("folders") or []:
            if fid not in folder_ids:
                fix = did_you_mean(fid, sorted(folder_ids), f"use ids from syncthing_folders ({', '.join(sorted(folder_ids)) or 'none'})")
                err(spec.name, "syncthing_devices", f"device `{device_entry['name']}` gets unknown folder `{fid}`", fix)
    gui = data.get("syncthing_gui_address")
    if isinstance(gui, str):
        if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}", gui) or not 0 < int(gui.rsplit(":", 1)[1]) < 65536:
            err(spec.name, "syncthing_gui_address", f"`{gui}` is not host:port", "write it like 127.0.0.1:8384")
    password = data.get("syncthing_gui_password")
    if (password is None or isinstance(password, str)) and is_secret_bad(password):
        where = f"on {gui}" if isinstance(gui, str) else ""
        err(
            spec.name,
            "syncthing_gui_password",
            f"missing or left at an example value: the Syncthing GUI / REST API {where} needs one even on loopback "
            "(any local account could read its API key and share the data out)",
            'set syncthing_gui_password = secret("syncthing_gui_password") (kept in the controller\'s secret store)',
        )
    elif isinstance(password, str) and ("\n" in password or "\r" in password):
        err(spec.name, "syncthing_gui_password", "contains a line break", "use a password on one line")


LAYER = Layer(
    "dnas",
    [
        Section("Decentralized NAS (deploys/dnas.py)"),
        Key("dnas_path", Kind(), "/srv/dnas", "The one data folder served by Syncthing, Samba and NFS.", DNAS),
        Key("dnas_user", USER_KIND, "dnas", "The owner of every file in it (fixed ids, the same on every dnas node).", DNAS),
        Key("dnas_uid", count(1000, 59999), 2000, "", DNAS),
        Key("dnas_gid", count(1000, 59999), 2000, "", DNAS),
        Key(
            "dnas_device",
            Kind(optional=True),
            None,
            'Optional data disk mounted at dnas_path: "UUID=...", "LABEL=..." or /dev/disk/by-id/...\n'
            "(never /dev/sdX). None: dnas_path is a folder on the root filesystem.",
            DNAS,
        ),
        Key("dnas_fstype", Kind(), "ext4", "", DNAS),
        Key("dnas_format", flag(), False, "Format dnas_device only if it carries no filesystem and no partition table. Never otherwise.", DNAS),
        Key(
            "dnas_blank_device",
            Kind(optional=True),
            None,
            "A blank disk cannot be found by LABEL=/UUID= (it has none yet): to have it formatted, name it\n"
            "here by a stable path (/dev/disk/by-id/... or /dev/disk/by-path/...). With dnas_format = True\n"
            "and no disk matching dnas_device yet, it is formatted with dnas_fstype and gets the label (or\n"
            "UUID) of dnas_device - only if it carries no filesystem, partition table or other signature.",
            DNAS,
        ),
        Key(
            "dnas_mount_options",
            Kind(pattern=re.compile(r"[^\s,]+(,[^\s,]+)*"), bad="is not a list of mount options", fix="separate options with commas, without blanks, e.g. defaults,noatime"),
            "defaults,noatime",
            "",
            DNAS,
        ),
        Section("Syncthing"),
        Key("syncthing_enabled", flag(), True, "", DNAS),
        Key(
            "syncthing_source",
            Kind(choices=("debian", "syncthing")),
            "debian",
            '"debian" (the distribution\'s package) or "syncthing" (Syncthing\'s own signed apt repository).',
            DNAS,
        ),
        Key("syncthing_gui_address", Kind(), "127.0.0.1:8384", "GUI / REST API address. Anything but loopback gets TLS.", DNAS),
        Key(
            "syncthing_gui_password",
            Kind(optional=True),
            None,
            'SECRET, required: the GUI / REST API always asks for user "homecloud" and this password (also\n'
            'on loopback: any local account could use it otherwise). secret("syncthing_gui_password").',
            DNAS,
        ),
        Key(
            "syncthing_internet",
            flag(),
            False,
            "False: Syncthing finds and reaches devices on the LAN only (no global discovery, no relays, no\n"
            "UPnP/NAT-PMP port mapping or STUN). True: all of those on, for a phone outside the home.\n"
            "Crash and usage reporting are off either way.",
            DNAS,
        ),
        Key(
            "syncthing_folders",
            Kind(list),
            [{"id": "homecloud-data", "label": "homecloud data", "path": "data"}],
            "Folders shared among all dnas nodes: id, label, path (relative to dnas_path).",
            DNAS,
            FOLDERS,
        ),
        Key(
            "syncthing_devices",
            Kind(list),
            [],
            "Other devices (phones, laptops) by device ID, and the folder ids they get:\n"
            '[{"name": "phone", "id": "ABCDEFG-...", "folders": ["homecloud-data"]}]',
            DNAS,
            DEVICES,
        ),
    ],
    check=check,
)

DnasSettings = LAYER.settings_class


def settings(host) -> DnasSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


@deploy("dnas")
def dnas(settings: DnasSettings, samba_settings: SambaSettings, nfs_settings: NfsSettings, peers: dict[str, str], sudo: bool, salt: str) -> None:
    """
    The NAS on one dnas node: its data disk and folder, their owner, Syncthing peered with
    `peers` (name -> address of every dnas node, this one included), then Samba and NFS over the
    same folder. `sudo`: this host uses sudo (the Syncthing API is read with it). `salt` keys
    the fingerprints of the secrets kept on the node (homecloud/fingerprints.py).
    """
    dnas_path = normpath(settings.dnas_path)
    dnas_user = settings.dnas_user
    device = settings.dnas_device
    fstype = settings.dnas_fstype
    syncthing_on = settings.syncthing_enabled

    # The services that read and write the data folder.
    users_of_data = [f"syncthing@{dnas_user}"] if syncthing_on else []
    if samba_settings.samba_enabled:
        users_of_data.append("smbd")
    if nfs_settings.nfs_enabled:
        users_of_data.append("nfs-server" if nfs_settings.nfs_backend == "kernel" else "nfs-ganesha")

    # --- 1. The data disk -------------------------------------------------------------------
    if device:
        data_disk("Data disk", device, fstype, settings.dnas_format, settings.dnas_blank_device, dnas_path, settings.dnas_mount_options)
        if users_of_data:
            storage.requires_mount(
                name=f"{', '.join(users_of_data)} start only with {dnas_path} mounted",
                services=users_of_data,
                path=dnas_path,
            )

    # --- 2. The owner of the data --------------------------------------------------------------
    # The same step the samba and nfs layers take on their own. Its home is the data folder:
    # Syncthing keeps its config and index there, on the data disk.
    dnas_owner(dnas_user, settings.dnas_uid, settings.dnas_gid, dnas_path)
    owned_folders("Data folder", [dnas_path], dnas_user)

    # --- 3. Syncthing ---------------------------------------------------------------------------
    folders: list[dict] = []
    if syncthing_on:
        from_syncthing = settings.syncthing_source == "syncthing"
        if from_syncthing:
            system.packages(name="Tools to fetch Syncthing's apt key", packages=["curl", "ca-certificates"])
        syncthing.repository(
            name="Syncthing's own apt repository" if from_syncthing else "No Syncthing apt repository (Debian's package)",
            present=from_syncthing,
        )
        system.packages(name="Install Syncthing", packages=["syncthing", "python3"])
        folders = [
            {"id": folder["id"], "label": folder.get("label") or folder["id"], "path": normpath(join(dnas_path, folder["path"]))}
            for folder in settings.syncthing_folders
        ]
        owned_folders("Syncthing folder", [folder["path"] for folder in folders], dnas_user, acl_installed=True)
        syncthing.service(name=f"Syncthing runs as syncthing@{dnas_user}", user=dnas_user)
        password = settings.syncthing_gui_password
        gui_address = settings.syncthing_gui_address
        internet = "on" if settings.syncthing_internet else "off"
        syncthing.configure(
            name=f"Syncthing: no untouched default folder, GUI on {gui_address} with a password, every dnas node peered, "
            f"folders shared, internet discovery/relays/NAT {internet}, no reports",
            user=dnas_user,
            gui_address=gui_address,
            gui_password=HiddenValue(password),
            peers=dict(peers),
            folders=folders,
            devices=thawed(settings.syncthing_devices),
            sudo=sudo,
            internet=settings.syncthing_internet,
        )
        secrets_ops.fingerprints(
            name="Fingerprint of the Syncthing GUI password (no secret stored)",
            salt=salt,
            secrets={"syncthing_gui_password": HiddenValue(password)},
        )
    else:
        syncthing.service(name=f"Syncthing (syncthing@{dnas_user}) is off", user=dnas_user, present=False)

    # --- 4. Samba and NFS over the same folder --------------------------------------------------
    # Their operations run after the ones above: the dnas owner and these folders are in place
    # (checked on the node a moment before), so those layers do not read them again.
    prepared = sorted({dnas_path, *(folder["path"] for folder in folders)})
    samba(samba_settings, salt=salt, prepared=prepared)
    nfs(nfs_settings, prepared=prepared)


def apply(state, host) -> None:
    """The layer on `host` when it is a dnas node: the NAS, then Samba and NFS."""
    from homecloud.fingerprints import salt_for

    if "dnas" in host.groups:
        dnas(
            settings(host),
            samba_layer.settings(host),
            nfs_layer.settings(host),
            peers={peer.name: address(peer) for peer in group_hosts(state, "dnas")},
            sudo=bool(host.data.get("_sudo")),
            salt=salt_for(state, host),
        )
