"""
NFS on the dnas nodes: the exports of nfs_exports (folders of dnas_path), NFSv3 and NFSv4,
every access squashed to the dnas user, by the kernel server or nfs-ganesha.
"""

from __future__ import annotations

import ipaddress

from homecloud.schema import Cluster, Entries, Key, Kind, Layer, Section, check_entries, check_relative, flag

DNAS = ("dnas",)

EXPORTS = Entries(
    "export",
    "path",
    {"path": Kind(required=True), "networks": Kind(list, required=True), "read_only": flag()},
    '{"path": "data", "networks": ["192.168.1.0/24"], "read_only": False}',
)


def check(err, cluster: Cluster) -> None:
    for spec in cluster.group("dnas"):
        if spec.data.get("nfs_enabled") is not True:
            continue
        export_paths: set[str] = set()
        for export in check_entries(err, spec.name, "nfs_exports", spec.data.get("nfs_exports"), EXPORTS):
            check_relative(err, spec.name, "nfs_exports", export["path"])
            epath = export["path"].strip("/")
            if epath in export_paths:
                err(spec.name, "nfs_exports", f"path `{epath}` is exported twice", "merge the two exports into one with all their networks")
            export_paths.add(epath)
            if not export["networks"]:
                err(spec.name, "nfs_exports", f"export `{export['path']}` allows no network", "list the networks allowed, e.g. ['192.168.1.0/24']")
            for network in export["networks"]:
                try:
                    net = ipaddress.ip_network(str(network), strict=True)
                except ValueError as e:
                    err(spec.name, "nfs_exports", f"network `{network}` is invalid ({e})", "write it as a network in CIDR form, e.g. 192.168.1.0/24")
                    continue
                if net.prefixlen == 0:
                    err(spec.name, "nfs_exports", f"network `{network}` opens the export to the whole internet", "list your LAN only, e.g. 192.168.1.0/24")


LAYER = Layer(
    "nfs",
    [
        Section("NFS"),
        Key("nfs_enabled", flag(), True, "", DNAS),
        Key(
            "nfs_backend",
            Kind(choices=("kernel", "ganesha")),
            "kernel",
            '"kernel" (nfs-kernel-server; the default on real boards) or "ganesha" (userspace nfs-ganesha,\n'
            "for kernels without nfsd, such as containers).",
            DNAS,
        ),
        Key(
            "nfs_exports",
            Kind(list),
            [{"path": "data", "networks": ["192.168.1.0/24"], "read_only": False}],
            "Exports: path (relative to dnas_path), networks allowed (CIDR), read_only. Access is squashed\n"
            "to dnas_uid/dnas_gid. NFSv3 and NFSv4.",
            DNAS,
            EXPORTS,
        ),
    ],
    reads=("dnas_path", "dnas_user", "dnas_uid", "dnas_gid"),
    check=check,
)

NfsSettings = LAYER.settings_class


def settings(host) -> NfsSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)
