"""
Layer 3, Longhorn's host prerequisites on the k3s nodes with longhorn_enabled: packages,
modules, iscsid, multipathd kept off its devices, the data path on ext4 or XFS.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api import deploy
from pyinfra.operations import files

from facts.k3s import K3sArch
from facts.longhorn import COMMANDS, MODULES, PACKAGES
from homecloud.cluster import group_hosts
from operations import longhorn as longhorn_ops, system

from .common import data_disk
from homecloud.schema import DEVICE_SPEC_RE, K3S_GROUPS, Cluster, Key, Kind, Layer, Section, check_blank_device, check_device_label, check_outside_k3s, flag


def check(err, cluster: Cluster) -> None:
    for spec in cluster.k3s_nodes:
        if spec.data.get("longhorn_enabled") and spec.data.get("node_arch") == "armhf":
            err(spec.name, "longhorn_enabled", "Longhorn does not run on armv7 (armhf) boards", f"set longhorn_enabled = False for {spec.name}")
        device = spec.data.get("longhorn_device")
        if spec.data.get("longhorn_enabled"):
            if isinstance(device, str) and not DEVICE_SPEC_RE.fullmatch(device):
                err(spec.name, "longhorn_device", f"`{device}` may name another disk after a reboot", "use UUID=... or LABEL=... (see `blkid`), or /dev/disk/by-id/...")
            if spec.data.get("longhorn_fstype") not in ("ext4", "xfs"):
                err(spec.name, "longhorn_fstype", f"`{spec.data.get('longhorn_fstype')!r}` is not supported by Longhorn", "use ext4 or xfs")
            check_blank_device(err, spec, "longhorn")
            check_device_label(err, spec, "longhorn")
            check_outside_k3s(err, spec.name, "longhorn_data_path", spec.data.get("longhorn_data_path"))


LAYER = Layer(
    "longhorn",
    [
        Section("Longhorn host prerequisites (deploys/longhorn.py)"),
        Key("longhorn_enabled", flag(), True, "", K3S_GROUPS),
        Key("longhorn_data_path", Kind(), "/var/lib/longhorn", "Where Longhorn keeps replicas; must be ext4 or XFS.", K3S_GROUPS),
        Key(
            "longhorn_device",
            Kind(optional=True),
            None,
            'Optional dedicated disk for longhorn_data_path: "UUID=...", "LABEL=..." or a\n/dev/disk/by-id/... path (never /dev/sdX).',
            K3S_GROUPS,
        ),
        Key("longhorn_format", flag(), False, "Format longhorn_device only if it carries no filesystem and no partition table.", K3S_GROUPS),
        Key("longhorn_fstype", Kind(), "ext4", 'Filesystem of longhorn_device: "ext4" or "xfs" (the two Longhorn supports).', K3S_GROUPS),
        Key(
            "longhorn_blank_device",
            Kind(optional=True),
            None,
            "Optional blank disk by a stable path (/dev/disk/by-id/...) that gets longhorn_device's label\n"
            "or UUID when no disk matches longhorn_device yet (with longhorn_format = True; never a disk\n"
            "that carries anything).",
            K3S_GROUPS,
        ),
    ],
    check=check,
)

LonghornSettings = LAYER.settings_class


def settings(host) -> LonghornSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


@deploy("longhorn")
def longhorn(settings: LonghornSettings) -> None:
    """Longhorn's host prerequisites on one k3s node that can run Longhorn (not armhf)."""
    data_path = settings.longhorn_data_path
    system.packages(
        name="Longhorn host packages (open-iscsi, NFSv4 client, cryptsetup, dmsetup, tools)",
        # curl, util-linux (findmnt, blkid, lsblk), gawk/mawk, grep and bash for the commands
        # Longhorn runs on the host: COMMANDS in facts/longhorn.py.
        packages=list(PACKAGES) + ["curl", "util-linux", "mawk"],
    )
    device = settings.longhorn_device
    if device:
        fstype = settings.longhorn_fstype
        data_disk("Longhorn disk", device, fstype, settings.longhorn_format, settings.longhorn_blank_device, data_path, "defaults,noatime")
    else:
        files.directory(name=f"Longhorn data path {data_path}", path=data_path)
    longhorn_ops.multipath(name="multipathd leaves Longhorn devices alone")
    longhorn_ops.modules(name="Kernel modules iscsi_tcp and dm_crypt", modules=list(MODULES))
    longhorn_ops.iscsid(name="iscsid enabled and running")
    longhorn_ops.preflight(
        name=f"Longhorn preflight ({len(PACKAGES)} packages, {len(COMMANDS)} commands, iscsid, modules, "
        "device-mapper, NFSv4, multipathd, data path)",
        data_path=data_path,
    )


def apply(state, host) -> None:
    """The layer on `host` when it is a k3s node with longhorn_enabled; armv7 boards are skipped."""
    config = settings(host)
    k3s_nodes = group_hosts(state, "k3s_servers") + group_hosts(state, "k3s_agents")
    if host not in k3s_nodes or not config.longhorn_enabled:
        return
    if host.get_fact(K3sArch) == "armhf":
        logger.warning(
            f"homecloud: {host.name} is an armv7 (armhf) board: Longhorn does not run there, its "
            "prerequisites are skipped (set longhorn_enabled = False for it to silence this)."
        )
        return
    longhorn(config)
