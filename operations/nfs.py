"""
NFS exports of the dnas data folder, one model for two servers:

- the kernel server (nfs-kernel-server): a managed `/etc/exports.d/homecloud.exports`, applied
  with `exportfs -ra` only when it changed;
- the userspace server nfs-ganesha (FSAL VFS), for kernels without nfsd: a managed
  `/etc/ganesha/ganesha.conf` (the distribution's file is copied aside first); restart the
  service when the operation changed something.

Every export squashes all access to one owner (all_squash, anonuid/anongid = the dnas user) so
files written over NFS belong to the same user as those written by Samba and Syncthing, and
serves NFSv3 and NFSv4 (ganesha: the v4 pseudo path equals the real path, like the kernel
server, so one URL works for both versions).
"""

from __future__ import annotations

import ipaddress

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.files import FileContents

from operations.system import move_aside, replace_file, text_file

EXPORTS_HEADER = "# Managed by homecloud (operations/nfs.py): edits here are overwritten."
GANESHA_HEADER = "# Managed by homecloud (operations/nfs.py): edits here are overwritten."


def _check_exports(exports: list[dict]) -> list[dict]:
    checked = []
    seen = set()
    for export in exports:
        if not isinstance(export, dict) or "path" not in export:
            raise OperationError(f"export {export!r}: path is required")
        path = str(export["path"])
        if not path.startswith("/") or '"' in path or "\n" in path:
            raise OperationError(f"export path `{path}` must be absolute (and without quotes)")
        if path in seen:
            raise OperationError(f"export path `{path}` is listed twice")
        seen.add(path)
        networks = export.get("networks") or []
        if not networks:
            raise OperationError(f"export `{path}` allows no network")
        normalized = []
        for network in networks:
            try:
                normalized.append(str(ipaddress.ip_network(str(network), strict=True)))
            except ValueError as e:
                raise OperationError(f"export `{path}`: network `{network}` is invalid ({e})") from e
        checked.append({"path": path, "networks": normalized, "read_only": export.get("read_only", True) is not False})
    return checked


def _normalized(lines) -> list[str]:
    return [line.rstrip() for line in lines if line.strip()]


def render_kernel_exports(exports: list[dict], anonuid: int, anongid: int) -> str:
    lines = [EXPORTS_HEADER]
    for export in _check_exports(exports):
        options = ",".join(
            [
                "ro" if export["read_only"] else "rw",
                "sync",
                "no_subtree_check",
                "all_squash",
                f"anonuid={anonuid}",
                f"anongid={anongid}",
            ]
        )
        clients = " ".join(f"{network}({options})" for network in export["networks"])
        lines.append(f'"{export["path"]}" {clients}')
    return "\n".join(lines) + "\n"


def render_ganesha(
    exports: list[dict],
    anonuid: int,
    anongid: int,
    grace_period: int,
    lease_lifetime: int,
    mountd_port: int = 20048,
    nlm_port: int = 32768,
) -> str:
    lines = [
        GANESHA_HEADER,
        "NFS_CORE_PARAM {",
        "    Protocols = 3, 4;",
        # Fixed ports for the NFSv3 helpers (a firewall can let them through); no rquota service.
        f"    MNT_Port = {mountd_port};",
        f"    NLM_Port = {nlm_port};",
        "    Enable_RQUOTA = false;",
        "}",
        "",
        "NFSV4 {",
        # A short grace period: after a restart, clients wait this long before new opens/locks.
        f"    Grace_Period = {grace_period};",
        f"    Lease_Lifetime = {lease_lifetime};",
        "}",
        "",
    ]
    for index, export in enumerate(_check_exports(exports), start=1):
        lines += [
            "EXPORT {",
            f"    Export_Id = {index};",
            f'    Path = "{export["path"]}";',
            f'    Pseudo = "{export["path"]}";',
            "    Protocols = 3, 4;",
            "    Transports = TCP;",
            "    SecType = sys;",
            # Nothing is allowed unless a CLIENT block below allows it.
            "    Access_Type = None;",
            "    Squash = All_Squash;",
            f"    Anonymous_Uid = {anonuid};",
            f"    Anonymous_Gid = {anongid};",
            "    FSAL {",
            "        Name = VFS;",
            "    }",
            "    CLIENT {",
            f"        Clients = {', '.join(export['networks'])};",
            f"        Access_Type = {'RO' if export['read_only'] else 'RW'};",
            "    }",
            "}",
            "",
        ]
    return "\n".join(lines)


GANESHA_CONF = "/etc/ganesha/ganesha.conf"
NFS_CONF_DROPIN = "/etc/nfs.conf.d/homecloud.conf"


@operation()
def kernel_exports(
    exports: list[dict],
    anonuid: int,
    anongid: int,
    path: str = "/etc/exports.d/homecloud.exports",
    present: bool = True,
):
    """
    Export folders with the kernel NFS server through a managed file in /etc/exports.d, and
    apply it with ``exportfs -ra`` only when the file changed.

    + exports: list of {path (absolute), networks (CIDR list), read_only (True when not given)}
    + anonuid: the uid every access is squashed to (all_squash)
    + anongid: the gid every access is squashed to
    + path: the managed exports file (a replaced one is kept as ``<path>.<timestamp>``)
    + present: False moves the managed file to ``<path>.<timestamp>`` and unexports its
      folders (the data is not touched)

    **Example:**

    .. code:: python

        nfs.kernel_exports(
            exports=[{"path": "/srv/dnas/data", "networks": ["192.168.1.0/24"]}],
            anonuid=2000,
            anongid=2000,
        )
    """
    current = host.get_fact(FileContents, path=path)

    if not present:
        if current is None:
            host.noop(f"{path} is absent")
            return
        # Moved aside (not read by exportfs: only *.exports counts), not deleted.
        yield move_aside(path)
        yield "exportfs -ra"
        return

    wanted = render_kernel_exports(exports, anonuid, anongid)
    if current is not None and _normalized(current) == _normalized(wanted.splitlines()):
        host.noop(f"{path} is up to date")
        return

    # homecloud's own file, but a user may have edited it by hand: the replaced one is kept
    # beside it under a name exportfs does not read (only *.exports counts).
    yield from replace_file(path, wanted, current is not None, backup=True)
    yield "exportfs -ra"


@operation()
def ganesha_config(
    exports: list[dict],
    anonuid: int,
    anongid: int,
    config: str = GANESHA_CONF,
    grace_period: int = 20,
    lease_lifetime: int = 15,
    mountd_port: int = 20048,
    nlm_port: int = 32768,
    present: bool = True,
):
    """
    Write nfs-ganesha's configuration: one EXPORT per folder (FSAL VFS, NFSv3 and v4 over TCP,
    all access squashed to anonuid/anongid, CLIENT blocks for the allowed networks), and a short
    NFSv4 grace period. The file it replaces (the distribution's, or ours edited by hand) is
    copied to ``<config>.<timestamp>`` first. Restart nfs-ganesha when this operation changed something.

    + exports: list of {path (absolute), networks (CIDR list), read_only (True when not given)}
    + anonuid: the uid every access is squashed to
    + anongid: the gid every access is squashed to
    + config: ganesha's configuration file
    + grace_period: NFSv4 grace period in seconds after a (re)start
    + lease_lifetime: NFSv4 lease lifetime in seconds (not above the grace period)
    + mountd_port: the fixed port of the MOUNT protocol (NFSv3)
    + nlm_port: the fixed port of NLM, ganesha's lock manager (NFSv3); no rquota service is run
    + present: False moves our configuration to ``<config>.<timestamp>``

    **Example:**

    .. code:: python

        nfs.ganesha_config(
            exports=[{"path": "/srv/dnas/data", "networks": ["192.168.1.0/24"]}],
            anonuid=2000,
            anongid=2000,
        )
    """
    if not 0 <= grace_period <= 180 or not 1 <= lease_lifetime <= 120:
        raise OperationError("grace_period must be 0-180 and lease_lifetime 1-120 seconds")
    if lease_lifetime > grace_period:
        raise OperationError("lease_lifetime must not be longer than grace_period")
    if not (0 < mountd_port < 65536 and 0 < nlm_port < 65536) or mountd_port == nlm_port:
        raise OperationError("mountd_port and nlm_port must be two different ports (1-65535)")

    current = host.get_fact(FileContents, path=config)
    ours = current is not None and GANESHA_HEADER in [line.rstrip() for line in current]

    if not present:
        if ours:
            yield move_aside(config)
        else:
            host.noop(f"{config} is not managed by homecloud")
        return

    wanted = render_ganesha(exports, anonuid, anongid, grace_period, lease_lifetime, mountd_port, nlm_port)
    if ours and _normalized(current) == _normalized(wanted.splitlines()):
        host.noop(f"{config} is up to date")
        return

    # The distribution's file, or ours with edits made by hand: kept in a backup.
    yield from replace_file(config, wanted, current is not None, backup=True)


def render_helper_ports(mountd_port: int, statd_port: int, lockd_port: int, kernel_server: bool) -> str:
    lines = [
        EXPORTS_HEADER,
        "# Fixed ports for the NFSv3 helper services (random otherwise), so a firewall can let them through.",
    ]
    if kernel_server:
        lines += ["[mountd]", f"port = {mountd_port}"]
    lines += ["[statd]", f"port = {statd_port}"]
    if kernel_server:
        # rpc.statd hands these to the kernel's lockd (fs.nfs.nlm_tcpport / nlm_udpport).
        lines += ["[lockd]", f"port = {lockd_port}", f"udp-port = {lockd_port}"]
    return "\n".join(lines) + "\n"


@operation()
def helper_ports(
    mountd_port: int,
    statd_port: int,
    lockd_port: int,
    kernel_server: bool = True,
    path: str = NFS_CONF_DROPIN,
    present: bool = True,
):
    """
    Pin the ports of the NFSv3 helper services in a managed nfs.conf drop-in (nfs-utils reads
    ``/etc/nfs.conf.d/*.conf`` after ``/etc/nfs.conf``): mountd, statd and the kernel's lockd
    (TCP and UDP) for the kernel server; only statd for nfs-ganesha, which runs its own MOUNT
    and NLM services (their ports are in its configuration, see ``ganesha_config``). Restart
    rpc-statd (and nfs-server) when this operation changed something.

    + mountd_port: rpc.mountd's port (kernel server)
    + statd_port: rpc.statd's port
    + lockd_port: the kernel lockd's port, TCP and UDP (kernel server)
    + kernel_server: False for nfs-ganesha: statd only
    + path: the managed drop-in
    + present: False removes it (the services pick random ports again after a restart; the
      ports are not used then)

    **Example:**

    .. code:: python

        nfs.helper_ports(mountd_port=20048, statd_port=32765, lockd_port=32768)
    """
    if present:
        ports = [mountd_port, statd_port, lockd_port] if kernel_server else [statd_port]
        if any(not isinstance(port, int) or not 0 < port < 65536 for port in ports) or len(set(ports)) != len(ports):
            raise OperationError(f"the NFS helper ports {ports} must be different ports (1-65535)")
    text = render_helper_ports(mountd_port, statd_port, lockd_port, kernel_server) if present else ""
    yield from text_file._inner(path=path, text=text, present=present)
