"""
The decentralized NAS (dnas) on the hosts of the `dnas` group: one data folder per node
(`dnas_path`, optionally on its own disk), kept in sync between the nodes by Syncthing and
served on the LAN by Samba and NFS.

    pyinfra -y inventories/pi.py deploys/dnas.py

In order, on each dnas node:

1. the data disk (`dnas_device`): its filesystem (a blank disk, named by `dnas_blank_device`,
   is formatted only when `dnas_format` asks and nothing at all is found on it; a disk that
   holds anything stops the run with the reason), a systemd mount unit at `dnas_path`, and
   drop-ins that make Syncthing, Samba and NFS start only with the disk mounted (never into
   the empty folder);
2. the dnas user and group with fixed ids (`dnas_uid`/`dnas_gid`), owner of every file;
3. Syncthing as `syncthing@<dnas_user>` (Debian's package or Syncthing's own apt repository),
   its GUI on `syncthing_gui_address`, no default folder, every dnas node peered with every
   other one (device IDs read from the other nodes while the deploy runs), the folders of
   `syncthing_folders` shared among them and with the devices of `syncthing_devices`;
4. Samba (deploys/samba.py) and NFS (deploys/nfs.py) over the same folder.

Hosts outside the `dnas` group are left alone.
"""

from pathlib import Path

from pyinfra import host, local, state

from homecloud.fingerprints import check_secrets, salt_for
from homecloud.model import check_state

check_state(state)
check_secrets(state)

from posixpath import join, normpath  # noqa: E402

from pyinfra.api import HiddenValue  # noqa: E402
from pyinfra.operations import files  # noqa: E402

from homecloud.cluster import address, group_hosts  # noqa: E402
from operations import secrets, storage, syncthing, system  # noqa: E402

HERE = Path(__file__).resolve().parent
data = host.data

if "dnas" in host.groups:
    dnas_path = normpath(data.get("dnas_path"))
    dnas_user = data.get("dnas_user")
    device = data.get("dnas_device")
    fstype = data.get("dnas_fstype", "ext4")
    syncthing_on = bool(data.get("syncthing_enabled"))

    # The services that read and write the data folder.
    users_of_data = [f"syncthing@{dnas_user}"] if syncthing_on else []
    if data.get("samba_enabled"):
        users_of_data.append("smbd")
    if data.get("nfs_enabled"):
        users_of_data.append("nfs-server" if data.get("nfs_backend", "kernel") == "kernel" else "nfs-ganesha")

    # --- 1. The data disk -------------------------------------------------------------------
    if device:
        kind, _, value = device.partition("=")
        storage.filesystem(
            name=f"Data disk {device} carries {fstype}",
            device=device,
            fstype=fstype,
            label=value if kind == "LABEL" else None,
            uuid=value if kind == "UUID" else None,
            format=bool(data.get("dnas_format")),
            blank_device=data.get("dnas_blank_device"),
        )
        storage.mount(
            name=f"Data disk {device} mounted at {dnas_path}",
            device=device,
            path=dnas_path,
            fstype=fstype,
            options=data.get("dnas_mount_options", "defaults"),
        )
        if users_of_data:
            storage.requires_mount(
                name=f"{', '.join(users_of_data)} start only with {dnas_path} mounted",
                services=users_of_data,
                path=dnas_path,
            )

    # --- 2. The owner of the data --------------------------------------------------------------
    # The same operation deploys/samba.py and deploys/nfs.py use: created when absent with the
    # fixed ids, an existing account with other ids is refused (files would change hands). Its
    # home is the data folder: Syncthing keeps its config and index there, on the data disk.
    system.account(
        name=f"dnas owner {dnas_user} (uid {data.get('dnas_uid')}, created only if absent)",
        user=dnas_user,
        uid=data.get("dnas_uid"),
        gid=data.get("dnas_gid"),
        home=dnas_path,
    )
    files.directory(
        name=f"Data folder {dnas_path} owned by {dnas_user}",
        path=dnas_path,
        user=dnas_user,
        group=dnas_user,
    )

    # --- 3. Syncthing ---------------------------------------------------------------------------
    folders: list[dict] = []
    if syncthing_on:
        from_syncthing = data.get("syncthing_source", "debian") == "syncthing"
        if from_syncthing:
            system.packages(name="Tools to fetch Syncthing's apt key", packages=["curl", "ca-certificates"])
        syncthing.repository(
            name="Syncthing's own apt repository" if from_syncthing else "No Syncthing apt repository (Debian's package)",
            present=from_syncthing,
        )
        system.packages(name="Install Syncthing", packages=["syncthing", "python3"])
        folders = [
            {
                "id": folder["id"],
                "label": folder.get("label") or folder["id"],
                "path": normpath(join(dnas_path, folder["path"])),
            }
            for folder in data.get("syncthing_folders") or []
        ]
        for folder in folders:
            files.directory(
                name=f"Syncthing folder {folder['path']} owned by {dnas_user}",
                path=folder["path"],
                user=dnas_user,
                group=dnas_user,
            )
        syncthing.service(name=f"Syncthing runs as syncthing@{dnas_user}", user=dnas_user)
        password = data.get("syncthing_gui_password")
        gui_address = data.get("syncthing_gui_address", "127.0.0.1:8384")
        syncthing.configure(
            name=f"Syncthing: no untouched default folder, GUI on {gui_address}, every dnas node peered, folders shared",
            user=dnas_user,
            gui_address=gui_address,
            gui_password=HiddenValue(password) if password else None,
            peers={peer.name: address(peer) for peer in group_hosts(state, "dnas")},
            folders=folders,
            devices=[dict(device) for device in data.get("syncthing_devices") or []],
            sudo=bool(data.get("_sudo")),
        )
        if password:
            secrets.fingerprints(
                name="Fingerprint of the Syncthing GUI password (no secret stored)",
                salt=salt_for(state, host),
                secrets={"syncthing_gui_password": HiddenValue(password)},
            )
    else:
        syncthing.service(name=f"Syncthing (syncthing@{dnas_user}) is off", user=dnas_user, present=False)

    # --- 4. Samba and NFS over the same folder --------------------------------------------------
    # Their operations run after the ones above: the dnas owner and these folders are in place
    # (checked on the node a moment before), so the included layers do not read them again.
    prepared = sorted({dnas_path, *(folder["path"] for folder in folders)})
    for layer in ("samba", "nfs"):
        layer_file = HERE / f"{layer}.py"
        if layer_file.exists():
            local.include(str(layer_file), data={"dnas_prepared_folders": prepared})
