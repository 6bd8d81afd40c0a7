"""
NFS on the dnas nodes: the exports of `nfs_exports` (folders of dnas_path), NFSv3 and NFSv4,
every access squashed to the dnas user, served by the kernel server (`nfs_backend = "kernel"`)
or by the userspace nfs-ganesha (`"ganesha"`, for kernels without nfsd).

    pyinfra -y inventories/home.py deploys/nfs.py

Included by deploys/dnas.py after it created the dnas user and the data folder; it is also
safe on its own: it creates the dnas user (fixed uid/gid) only when absent and the exported
folders with the dnas owner.
"""

from pyinfra import host, state

from homecloud.model import check_state

check_state(state)

from io import StringIO  # noqa: E402
from posixpath import join, normpath  # noqa: E402

from pyinfra.operations import apt, files, systemd  # noqa: E402

from operations import nfs, samba  # noqa: E402

GANESHA_STOP_WAIT = """\
# Managed by homecloud (deploys/nfs.py): wait until ganesha.nfsd has exited before a restart
# starts the next one (ExecStop only asks it to shut down over D-Bus).
[Service]
ExecStopPost=/bin/sh -c 'i=0; while grep -qsx ganesha.nfsd /proc/[0-9]*/comm && [ "$$i" -lt 100 ]; do sleep 0.3; i=$$((i+1)); done; exit 0'
"""

if "dnas" in host.groups:
    dnas_path = host.data.get("dnas_path")
    dnas_user = host.data.get("dnas_user")
    uid = host.data.get("dnas_uid")
    gid = host.data.get("dnas_gid")
    backend = host.data.get("nfs_backend", "kernel")
    exports = [
        {
            "path": normpath(join(dnas_path, export["path"])),
            "networks": list(export.get("networks") or []),
            "read_only": bool(export.get("read_only", False)),
        }
        for export in host.data.get("nfs_exports") or []
    ]
    enabled = bool(host.data.get("nfs_enabled"))

    if enabled:
        samba.account(
            name=f"dnas owner {dnas_user} (created only if absent)",
            user=dnas_user,
            uid=uid,
            gid=gid,
            home=dnas_path,
        )
        for export in exports:
            files.directory(
                name=f"Exported folder {export['path']}",
                path=export["path"],
                user=dnas_user,
                group=dnas_user,
            )

    if enabled and backend == "kernel":
        # The other backend would hold port 2049: stop it if it is there.
        systemd.service(name="nfs-ganesha is off", service="nfs-ganesha", running=False, enabled=False)
        apt.packages(name="Install the kernel NFS server", packages=["nfs-kernel-server"], update=True, cache_time=3600)
        nfs.kernel_exports(name="NFS exports (kernel server)", exports=exports, anonuid=uid, anongid=gid)
        systemd.service(name="Kernel NFS server is running", service="nfs-server", running=True, enabled=True)

    elif enabled and backend == "ganesha":
        # The other backend would hold port 2049: stop it and drop its exports if it is there.
        systemd.service(name="Kernel NFS server is off", service="nfs-server", running=False, enabled=False)
        nfs.kernel_exports(name="No kernel NFS exports", exports=[], anonuid=uid, anongid=gid, present=False)
        apt.packages(
            name="Install nfs-ganesha",
            packages=["nfs-ganesha", "nfs-ganesha-vfs", "rpcbind", "dbus"],
            update=True,
            cache_time=3600,
        )
        ganesha = nfs.ganesha_config(
            name="nfs-ganesha configuration",
            exports=exports,
            anonuid=uid,
            anongid=gid,
        )
        # The unit stops ganesha with an asynchronous D-Bus call: a restart could start the new
        # server while the old one still holds port 2049 and, exiting, unregisters the new one
        # from rpcbind. Make "stop" wait until the old process is gone (at most ~30 s).
        stop_wait = files.put(
            name="nfs-ganesha: stop waits for the server to exit",
            src=StringIO(GANESHA_STOP_WAIT),
            dest="/etc/systemd/system/nfs-ganesha.service.d/homecloud-stop-wait.conf",
            mode="644",
        )
        systemd.daemon_reload(name="systemd reloads nfs-ganesha's unit", _if=stop_wait.did_change)
        systemd.service(name="rpcbind is running (NFSv3)", service="rpcbind", running=True, enabled=True)
        systemd.service(name="nfs-ganesha is running", service="nfs-ganesha", running=True, enabled=True)
        systemd.service(
            name="Restart nfs-ganesha (configuration changed)",
            service="nfs-ganesha",
            restarted=True,
            _if=ganesha.did_change,
        )

    else:
        # NFS turned off: nothing is exported any more (the data stays).
        nfs.kernel_exports(name="homecloud NFS exports removed", exports=[], anonuid=uid, anongid=gid, present=False)
        systemd.service(name="nfs-ganesha is off", service="nfs-ganesha", running=False, enabled=False)
