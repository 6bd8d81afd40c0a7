"""
Layer 3: Longhorn's host prerequisites on every k3s server and agent with longhorn_enabled.

    pyinfra -y inventories/pi.py deploys/longhorn.py

open-iscsi (iscsid running), an NFSv4 client, cryptsetup + dmsetup, the iscsi_tcp and dm_crypt
modules (loaded when the kernel has them, persisted in /etc/modules-load.d), multipathd kept
off Longhorn's devices, the commands Longhorn calls on the host, and the data path on ext4 or
XFS (on its own disk when longhorn_device is set). The last operation checks all of it the way
`longhornctl check preflight` does and fails the host with the list of what is still wrong.

This only prepares the hosts: Longhorn itself is installed into the cluster (Helm chart or
manifest) by you. armv7 (armhf) boards cannot run Longhorn: they are skipped with a warning,
and the k3s layer labels them node.longhorn.io/create-default-disk=false.
"""

from pyinfra import host, logger, state
from pyinfra.operations import files

from facts.k3s import K3sArch
from facts.longhorn import COMMANDS, MODULES, PACKAGES
from homecloud.cluster import group_hosts
from homecloud.model import check_state
from operations import longhorn, storage, system

check_state(state)

k3s_nodes = group_hosts(state, "k3s_servers") + group_hosts(state, "k3s_agents")

if host in k3s_nodes and host.data.get("longhorn_enabled"):
    arch = host.get_fact(K3sArch)
    data_path = host.data.get("longhorn_data_path")
    if arch == "armhf":
        logger.warning(
            f"homecloud: {host.name} is an armv7 (armhf) board: Longhorn does not run there, its "
            "prerequisites are skipped (set longhorn_enabled = False for it to silence this)."
        )
    else:
        system.packages(
            name="Longhorn host packages (open-iscsi, NFSv4 client, cryptsetup, dmsetup, tools)",
            # curl, util-linux (findmnt, blkid, lsblk), gawk/mawk, grep and bash for the commands
            # Longhorn runs on the host: COMMANDS in facts/longhorn.py.
            packages=list(PACKAGES) + ["curl", "util-linux", "mawk"],
        )
        device = host.data.get("longhorn_device")
        if device:
            fstype = host.data.get("longhorn_fstype") or "ext4"
            kind, _, value = device.partition("=")
            storage.filesystem(
                name=f"Longhorn disk {device} carries {fstype}",
                device=device,
                fstype=fstype,
                label=value if kind == "LABEL" else None,
                uuid=value if kind == "UUID" else None,
                format=bool(host.data.get("longhorn_format")),
                blank_device=host.data.get("longhorn_blank_device"),
            )
            storage.mount(
                name=f"Longhorn disk mounted at {data_path}",
                device=device,
                path=data_path,
                fstype=fstype,
                options="defaults,noatime",
            )
        else:
            files.directory(name=f"Longhorn data path {data_path}", path=data_path)
        longhorn.multipath(name="multipathd leaves Longhorn devices alone")
        longhorn.modules(name="Kernel modules iscsi_tcp and dm_crypt", modules=list(MODULES))
        longhorn.iscsid(name="iscsid enabled and running")
        longhorn.preflight(
            name=f"Longhorn preflight ({len(PACKAGES)} packages, {len(COMMANDS)} commands, iscsid, modules, "
            "device-mapper, NFSv4, multipathd, data path)",
            data_path=data_path,
        )
