"""
Layer 3, Longhorn's host prerequisites on the k3s nodes with longhorn_enabled: packages,
modules, iscsid, multipathd kept off its devices, the data path on ext4 or XFS.
"""

from __future__ import annotations

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
