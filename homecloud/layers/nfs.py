"""
NFS on the dnas nodes: the exports of nfs_exports (folders of dnas_path), NFSv3 and NFSv4,
every access squashed to the dnas user, by the kernel server or nfs-ganesha.
"""

from __future__ import annotations

import ipaddress
from posixpath import join, normpath

from pyinfra.api import deploy
from pyinfra.operations import systemd

from operations import nfs as nfs_ops, system

from .common import dnas_owner, owned_folders
from homecloud.schema import Cluster, Entries, Key, Kind, Layer, Section, check_entries, check_relative, count, flag

DNAS = ("dnas",)

EXPORTS = Entries(
    "export",
    "path",
    {"path": Kind(required=True), "networks": Kind(list, required=True), "read_only": flag(), "unauthenticated_write": flag()},
    '{"path": "data", "networks": ["192.168.1.0/24"], "read_only": True}',
)


def _overlaps(one: str, other: str) -> bool:
    """One folder is the other or inside it (relative paths of dnas_path)."""
    one, other = normpath(one.strip("/")), normpath(other.strip("/"))
    return one == other or one.startswith(other + "/") or other.startswith(one + "/")


def _samba_restricted(data: dict, path: str) -> list[str]:
    """The Samba shares (guests not allowed: a password is needed) over the same folder as `path`."""
    if data.get("samba_enabled") is not True or not isinstance(data.get("samba_shares"), list):
        return []
    return [
        str(share.get("name"))
        for share in data["samba_shares"]
        if isinstance(share, dict) and isinstance(share.get("path"), str) and not share.get("guest_ok") and _overlaps(share["path"], path)
    ]


def writable(export: dict) -> bool:
    """An export is read-write only when it says read_only = False (read-only when not given)."""
    return export.get("read_only", True) is False


def _check_unauthenticated_write(err, spec, export: dict, networks: list) -> None:
    """A read-write export to a whole subnet lets anyone there write, as any uid, a folder Samba
    only opens to named users with a password (and Syncthing replicates what they delete)."""
    if not writable(export) or export.get("unauthenticated_write") is True:
        return
    subnets = [str(net) for net in networks if net.prefixlen < net.max_prefixlen]
    shares = _samba_restricted(spec.data, export["path"])
    if subnets and shares:
        err(
            spec.name,
            "nfs_exports",
            f"export `{export['path']}` lets any host of {', '.join(subnets)} write without a password a folder "
            f"Samba restricts to its users (share {', '.join(f'`{s}`' for s in shares)})",
            "export it read-only, or read-write to named hosts only (e.g. 192.168.1.20/32), "
            'or add "unauthenticated_write": True to this export if every host there may change the data',
        )


def check(err, cluster: Cluster) -> None:
    for spec in cluster.group("dnas"):
        if spec.data.get("nfs_enabled") is not True:
            continue
        ports = {key: spec.data.get(key, default) for key, default in (("nfs_mountd_port", 20048), ("nfs_statd_port", 32765), ("nfs_lockd_port", 32768))}
        seen: dict = {}
        for key, port in ports.items():
            if isinstance(port, int) and port in seen:
                err(spec.name, key, f"port {port} is also {seen[port]}", "give each NFS helper service its own port")
            seen.setdefault(port, key)
        export_paths: set[str] = set()
        for export in check_entries(err, spec.name, "nfs_exports", spec.data.get("nfs_exports"), EXPORTS):
            check_relative(err, spec.name, "nfs_exports", export["path"])
            epath = export["path"].strip("/")
            if epath in export_paths:
                err(spec.name, "nfs_exports", f"path `{epath}` is exported twice", "merge the two exports into one with all their networks")
            export_paths.add(epath)
            if not export["networks"]:
                err(spec.name, "nfs_exports", f"export `{export['path']}` allows no network", "list the networks allowed, e.g. ['192.168.1.0/24']")
            networks = []
            for network in export["networks"]:
                try:
                    net = ipaddress.ip_network(str(network), strict=True)
                except ValueError as e:
                    err(spec.name, "nfs_exports", f"network `{network}` is invalid ({e})", "write it as a network in CIDR form, e.g. 192.168.1.0/24")
                    continue
                if net.prefixlen == 0:
                    err(spec.name, "nfs_exports", f"network `{network}` opens the export to the whole internet", "list your LAN only, e.g. 192.168.1.0/24")
                networks.append(net)
            _check_unauthenticated_write(err, spec, export, networks)


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
            [{"path": "data", "networks": ["192.168.1.0/24"], "read_only": True}],
            "Exports: path (relative to dnas_path), networks allowed (CIDR; a single host: 192.168.1.20/32),\n"
            "read_only (True when not given), unauthenticated_write (False). NFS has no password: access\n"
            "is squashed to dnas_uid/dnas_gid, whoever asks. The default is read-only to the LAN. A\n"
            "read-write export to a whole subnet of a folder that a Samba share restricts to its users is\n"
            "refused unless the export says \"unauthenticated_write\": True. NFSv3 and NFSv4.",
            DNAS,
            EXPORTS,
        ),
        Key(
            "nfs_mountd_port",
            count(1, 65535),
            20048,
            "Fixed ports of the NFSv3 helper services, so a firewall can let them through (they pick a\n"
            "random port otherwise; /etc/nfs.conf.d/homecloud.conf, and MNT_Port / NLM_Port for ganesha): mountd.",
            DNAS,
        ),
        Key("nfs_statd_port", count(1, 65535), 32765, "statd (NFSv3 lock recovery).", DNAS),
        Key("nfs_lockd_port", count(1, 65535), 32768, "lockd / NLM (NFSv3 locks), TCP and UDP.", DNAS),
    ],
    reads=("dnas_path", "dnas_user", "dnas_uid", "dnas_gid"),
    check=check,
)

NfsSettings = LAYER.settings_class


def settings(host) -> NfsSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


GANESHA_STOP_WAIT = """\
# Managed by homecloud (homecloud/layers/nfs.py): wait until ganesha.nfsd has exited before a
# restart starts the next one (ExecStop only asks it to shut down over D-Bus).
[Service]
ExecStopPost=/bin/sh -c 'i=0; while grep -qsx ganesha.nfsd /proc/[0-9]*/comm && [ "$$i" -lt 100 ]; do sleep 0.3; i=$$((i+1)); done; exit 0'
"""


@deploy("nfs")
def nfs(settings: NfsSettings, prepared: list[str] | None = None) -> None:
    """
    NFS on one dnas node. `prepared`: the folders the dnas layer has just made (with the dnas
    owner); None when the layer runs on its own: then it creates the dnas owner when absent
    and every exported folder itself.
    """
    dnas_path = settings.dnas_path
    dnas_user = settings.dnas_user
    uid = settings.dnas_uid
    gid = settings.dnas_gid
    mountd_port, statd_port, lockd_port = settings.nfs_mountd_port, settings.nfs_statd_port, settings.nfs_lockd_port
    if not settings.nfs_enabled:
        # NFS turned off: nothing is exported any more (the data stays).
        nfs_ops.kernel_exports(name="homecloud NFS exports removed", exports=[], anonuid=uid, anongid=gid, present=False)
        nfs_ops.helper_ports(name="No fixed NFS helper ports", mountd_port=0, statd_port=0, lockd_port=0, present=False)
        system.services(name="nfs-ganesha is off", services=["nfs-ganesha"], running=False, enabled=False)
        return

    exports = [
        {
            "path": normpath(join(dnas_path, export["path"])),
            "networks": list(export.get("networks") or []),
            "read_only": export.get("read_only", True) is not False,
        }
        for export in settings.nfs_exports
    ]
    if prepared is None:
        dnas_owner(dnas_user, uid, gid, dnas_path)
    owned_folders("Exported folder", [e["path"] for e in exports if e["path"] not in (prepared or [])], dnas_user, acl_installed=prepared is not None)

    if settings.nfs_backend == "kernel":
        # The other backend would hold port 2049: stop it if it is there.
        system.services(name="nfs-ganesha is off", services=["nfs-ganesha"], running=False, enabled=False)
        system.packages(name="Install the kernel NFS server", packages=["nfs-kernel-server"])
        nfs_ops.helper_ports(
            name=f"NFS helpers on fixed ports: mountd {mountd_port}, statd {statd_port}, lockd {lockd_port} (TCP and UDP)",
            mountd_port=mountd_port,
            statd_port=statd_port,
            lockd_port=lockd_port,
        )
        nfs_ops.kernel_exports(name="NFS exports (kernel server)", exports=exports, anonuid=uid, anongid=gid)
        # statd too: it answers NFSv3 lock recovery on its fixed port (a restart below only
        # restarts what runs).
        system.services(name="Kernel NFS server and statd are running", services=["nfs-server", "rpc-statd"])
        # Restarts decided from the node (service older than its file), not from this run's
        # changes: a run that wrote the file and failed before the restart is caught up.
        system.restarted_if_older(name="statd runs with its current port", service="rpc-statd", paths=[nfs_ops.NFS_CONF_DROPIN])
        system.restarted_if_older(name="The NFS server runs with its current helper ports", service="nfs-server", paths=[nfs_ops.NFS_CONF_DROPIN])
        return

    # ganesha. The other backend would hold port 2049: stop it and drop its exports if it is there.
    system.services(name="Kernel NFS server is off", services=["nfs-server"], running=False, enabled=False)
    nfs_ops.kernel_exports(name="No kernel NFS exports", exports=[], anonuid=uid, anongid=gid, present=False)
    system.packages(name="Install nfs-ganesha", packages=["nfs-ganesha", "nfs-ganesha-vfs", "rpcbind", "dbus"])
    # ganesha serves MOUNT and NLM itself (ports in its configuration); statd is nfs-common's.
    nfs_ops.helper_ports(
        name=f"statd on a fixed port ({statd_port})", mountd_port=mountd_port, statd_port=statd_port, lockd_port=lockd_port, kernel_server=False
    )
    nfs_ops.ganesha_config(
        name=f"nfs-ganesha configuration (MOUNT on port {mountd_port}, NLM on {lockd_port})",
        exports=exports, anonuid=uid, anongid=gid, mountd_port=mountd_port, nlm_port=lockd_port,
    )
    # The unit stops ganesha with an asynchronous D-Bus call: a restart could start the new
    # server while the old one still holds port 2049 and, exiting, unregisters the new one
    # from rpcbind. Make "stop" wait until the old process is gone (at most ~30 s).
    stop_wait = system.text_file(
        name="nfs-ganesha: stop waits for the server to exit",
        path="/etc/systemd/system/nfs-ganesha.service.d/homecloud-stop-wait.conf",
        text=GANESHA_STOP_WAIT,
    )
    systemd.daemon_reload(name="systemd reloads nfs-ganesha's unit", _if=stop_wait.did_change)
    system.services(name="rpcbind (NFSv3) and nfs-ganesha are running", services=["rpcbind", "nfs-ganesha"])
    # With ganesha, statd runs as nfs-ganesha-lock.service (rpc-statd.service would find it running).
    system.restarted_if_older(name="statd runs with its current port", service="nfs-ganesha-lock", paths=[nfs_ops.NFS_CONF_DROPIN])
    system.restarted_if_older(name="nfs-ganesha runs its current configuration", service="nfs-ganesha", paths=[nfs_ops.GANESHA_CONF])


def apply(state, host) -> None:
    """The layer on its own, on `host` when it is a dnas node."""
    if "dnas" in host.groups:
        nfs(settings(host))
