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

from posixpath import join, normpath  # noqa: E402

from pyinfra.operations import files, systemd  # noqa: E402

from operations import nfs, system  # noqa: E402

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

    # Set by deploys/dnas.py when it includes this layer: the dnas owner and these folders exist.
    prepared = host.data.get("dnas_prepared_folders")

    if enabled and prepared is None:
        system.account(
            name=f"dnas owner {dnas_user} (created only if absent)",
            user=dnas_user,
            uid=uid,
            gid=gid,
            home=dnas_path,
        )
    if enabled:
        for export in (e for e in exports if e["path"] not in (prepared or [])):
            files.directory(
                name=f"Exported folder {export['path']}",
                path=export["path"],
                user=dnas_user,
                group=dnas_user,
            )

    if enabled and backend == "kernel":
        # The other backend would hold port 2049: stop it if it is there.
        system.services(name="nfs-ganesha is off", services=["nfs-ganesha"], running=False, enabled=False)
        system.packages(name="Install the kernel NFS server", packages=["nfs-kernel-server"])
        nfs.kernel_exports(name="NFS exports (kernel server)", exports=exports, anonuid=uid, anongid=gid)
        system.services(name="Kernel NFS server is running", services=["nfs-server"])

    elif enabled and backend == "ganesha":
        # The other backend would hold port 2049: stop it and drop its exports if it is there.
        system.services(name="Kernel NFS server is off", services=["nfs-server"], running=False, enabled=False)
        nfs.kernel_exports(name="No kernel NFS exports", exports=[], anonuid=uid, anongid=gid, present=False)
        system.packages(name="Install nfs-ganesha", packages=["nfs-ganesha", "nfs-ganesha-vfs", "rpcbind", "dbus"])
        ganesha = nfs.ganesha_config(
            name="nfs-ganesha configuration",
            exports=exports,
            anonuid=uid,
            anongid=gid,
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
        systemd.service(
            name="Restart nfs-ganesha (configuration changed)",
            service="nfs-ganesha",
            restarted=True,
            _if=ganesha.did_change,
        )

    else:
        # NFS turned off: nothing is exported any more (the data stays).
        nfs.kernel_exports(name="homecloud NFS exports removed", exports=[], anonuid=uid, anongid=gid, present=False)
        system.services(name="nfs-ganesha is off", services=["nfs-ganesha"], running=False, enabled=False)
