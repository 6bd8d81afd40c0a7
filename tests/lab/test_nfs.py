"""
NFS on the dnas nodes, proven from the controller with a real userspace NFS client (libnfs:
`nfs-cp`, `nfs-cat`, `nfs-ls` from Debian's libnfs-utils; this machine has no kernel client):

- the effective exports (read back by the `nfs.KernelExports` / `nfs.GaneshaExports` facts)
  match the inventory: allowed networks, rw/ro, all access squashed to dnas_uid/dnas_gid;
- a file written over NFSv3 and over NFSv4 reads back, lands owned by the dnas user, is visible
  through Samba (smbclient get), and reaches the other dnas node when Syncthing serves it;
- a client outside the allowed networks is refused: the same client, the same export, only the
  allowed network changed to another subnet - refused over v3 and v4 - and allowed again when
  the inventory's networks come back (so the refusal is the network rule, not a broken server);
- the kernel backend gets the same proof where the kernel has nfsd (skipped otherwise);
- a second run changes nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from posixpath import join, normpath

import pytest

from facts.nfs import GaneshaExports, KernelExports
from homecloud.model import node_ip

pytestmark = pytest.mark.skipif(
    shutil.which("nfs-cp") is None, reason="libnfs-utils (nfs-cp, nfs-cat, nfs-ls) is not installed on the controller"
)

# Long enough for nfs-ganesha's grace period after a restart (20 s) plus the lease.
GRACE_WAIT = 90
OTHER_SUBNET = "192.0.2.0/24"  # TEST-NET-1: never the controller's network


# --- Inventory and nodes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nas(deployed, dnas_nodes):
    """(spec, testinfra host) of every dnas node with NFS on, in inventory order."""
    return dnas_nodes("nfs_enabled")


@pytest.fixture(scope="module", autouse=True)
def _remove_test_files(nas):
    """At the end, the files of this module go (also the empty ones left by attempts refused
    during a grace period, and their Syncthing copies on the other nodes)."""
    yield
    for spec, host in nas:
        for export in spec.data.get("nfs_exports") or []:
            host.run(f"rm -f {export_path(spec, export)}/hc-nfs-v[34]-*.txt")


def export_path(spec, export) -> str:
    return normpath(join(spec.data["dnas_path"], export["path"]))


def effective_exports(spec, host, backend: str | None = None) -> dict:
    """The exports of the node as our facts read them (the fact's own command, run on the node)."""
    backend = backend or spec.data.get("nfs_backend")
    fact = KernelExports() if backend == "kernel" else GaneshaExports()
    command = fact.command()
    command = command if isinstance(command, str) else command.get_raw_value()
    return fact.process(host.check_output(command).splitlines())


# --- The libnfs client ------------------------------------------------------------------------


def url(ip: str, path: str, name: str = "", version: int = 3) -> str:
    target = path.rstrip("/") + ("/" + name if name else "")
    return f"nfs://{ip}{target}" + ("?version=4" if version == 4 else "")


def nfs(*args, timeout=60):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def nfs_write(ip: str, path: str, version: int, text: str, wait: float = GRACE_WAIT) -> str:
    """Write a new file over NFS; retried while the server is in its grace period."""
    deadline = time.monotonic() + wait
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "payload.txt"
        local.write_text(text)
        while True:
            # A new name per attempt: a failed attempt during grace may leave an empty file.
            name = f"hc-nfs-v{version}-{uuid.uuid4().hex[:8]}.txt"
            proc = nfs("nfs-cp", str(local), url(ip, path, name, version))
            if proc.returncode == 0:
                return name
            if time.monotonic() > deadline:
                raise AssertionError(f"nfs-cp over v{version} to {ip}:{path} failed: {proc.stdout}{proc.stderr}")
            time.sleep(3)


def nfs_read(ip: str, path: str, name: str, version: int, wait: float = GRACE_WAIT) -> str:
    """The file's text; retried while the server is in its grace period (NFSv4 opens wait)."""
    deadline = time.monotonic() + wait
    while True:
        proc = nfs("nfs-cat", url(ip, path, name, version))
        if proc.returncode == 0 or "GRACE" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def nfs_list_allowed(ip: str, path: str, version: int, wait: float = GRACE_WAIT) -> bool:
    """True when nfs-ls reaches the export (retried a while: a restarted server may be starting)."""
    deadline = time.monotonic() + wait
    while True:
        if nfs("nfs-ls", url(ip, path, version=version)).returncode == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(3)


def smb_get(spec, share: str, name: str) -> str | None:
    """The file through Samba with the inventory's credentials (None: no Samba user can read it)."""
    users = spec.data.get("samba_users") or {}
    for share_def in spec.data.get("samba_shares") or []:
        if share_def["name"] != share:
            continue
        for user in share_def.get("valid_users") or sorted(users):
            fd, auth = tempfile.mkstemp(prefix="hc-smb-auth-")
            with os.fdopen(fd, "w") as f:
                f.write(f"username = {user}\npassword = {users[user]}\n")
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    proc = subprocess.run(
                        ["smbclient", f"//{node_ip(spec)}/{share}", "-A", auth, "-c", f"get {name} back.txt"],
                        capture_output=True, text=True, timeout=60, cwd=tmp,
                    )
                finally:
                    os.unlink(auth)
                if proc.returncode == 0:
                    return (Path(tmp) / "back.txt").read_text()
    return None


def share_for(spec, path: str) -> str | None:
    if not spec.data.get("samba_enabled"):
        return None
    for share in spec.data.get("samba_shares") or []:
        if normpath(join(spec.data["dnas_path"], share["path"])) == path:
            return share["name"]
    return None


def syncthing_peer_path(spec, path: str, nas) -> tuple | None:
    """(other spec, other host) when Syncthing serves `path` on this node and another one."""
    if not spec.data.get("syncthing_enabled"):
        return None
    folders = [normpath(join(spec.data["dnas_path"], f["path"])) for f in spec.data.get("syncthing_folders") or []]
    if not any(path == folder or path.startswith(folder + "/") for folder in folders):
        return None
    for other_spec, other_host in nas:
        if other_spec.name != spec.name and other_host.run("pgrep -x syncthing").rc == 0:
            return other_spec, other_host
    return None


def prove_exports(nas):
    """Write over v3 and v4, read back, check the owner on the node and through Samba."""
    written = []
    for spec, host in nas:
        ip = node_ip(spec)
        for export in spec.data.get("nfs_exports") or []:
            path = export_path(spec, export)
            for version in (3, 4):
                if export.get("read_only"):
                    assert nfs_list_allowed(ip, path, version), f"{spec.name}: cannot list read-only {path} over v{version}"
                    continue
                text = f"written over NFSv{version} to {spec.name}:{path} ({uuid.uuid4().hex})\n"
                name = nfs_write(ip, path, version, text)
                assert nfs_read(ip, path, name, version) == text
                owner = host.check_output(f"stat -c %u:%g {join(path, name)}")
                assert owner == f"{spec.data['dnas_uid']}:{spec.data['dnas_gid']}", f"{path}/{name} is owned by {owner}"
                share = share_for(spec, path)
                if share:
                    assert smb_get(spec, share, name) == text, f"{name} is not readable through Samba share {share}"
                written.append((spec, host, path, name, text))
    return written


# --- Tests ------------------------------------------------------------------------------------


def test_effective_exports_match_the_inventory(nas):
    for spec, host in nas:
        exports = effective_exports(spec, host)
        for export in spec.data.get("nfs_exports") or []:
            path = export_path(spec, export)
            assert path in exports, f"{spec.name}: {path} is not exported: {exports}"
            clients = exports[path]["clients"]
            for network in export["networks"]:
                client = clients[network]
                assert client["access"] == ("ro" if export.get("read_only") else "rw")
                assert client["squash"] == "all"
                assert client["anonuid"] == spec.data["dnas_uid"]
                assert client["anongid"] == spec.data["dnas_gid"]
            if spec.data.get("nfs_backend") == "ganesha":
                assert exports[path]["active"] is not False, f"{spec.name}: ganesha does not serve {path}"
                assert exports[path]["access"] == "none"  # nothing beyond the CLIENT blocks
                assert sorted(exports[path]["protocols"]) == ["3", "4"]


def test_nfs_v3_and_v4_write_read_owner_and_samba(nas):
    written = prove_exports(nas)
    assert written or all(e.get("read_only") for s, _ in nas for e in s.data.get("nfs_exports") or [])
    for spec, host, path, name, _ in written:
        host.run(f"rm -f {join(path, name)}")


def test_nfs_file_syncs_to_the_other_dnas_node(nas):
    checked = 0
    for spec, host in nas:
        for export in spec.data.get("nfs_exports") or []:
            path = export_path(spec, export)
            peer = syncthing_peer_path(spec, path, nas)
            if export.get("read_only") or peer is None:
                continue
            other_spec, other_host = peer
            text = f"synced from {spec.name} ({uuid.uuid4().hex})\n"
            name = nfs_write(node_ip(spec), path, 4, text)
            other_path = join(export_path(other_spec, export), name)
            deadline = time.monotonic() + 90
            while not other_host.file(other_path).exists and time.monotonic() < deadline:
                time.sleep(2)
            assert other_host.file(other_path).exists, f"{name} written over NFS on {spec.name} never reached {other_spec.name}"
            assert other_host.file(other_path).content_string == text
            owner = other_host.check_output(f"stat -c %u:%g {other_path}")
            assert owner == f"{other_spec.data['dnas_uid']}:{other_spec.data['dnas_gid']}"
            host.run(f"rm -f {join(path, name)}")
            checked += 1
            break
    if not checked:
        pytest.skip("Syncthing does not run on two dnas nodes serving an NFS export (Syncthing part not deployed)")


@pytest.mark.destructive
def test_client_outside_the_allowed_networks_is_refused(nas, pyinfra_run):
    spec, host = nas[0]
    ip = node_ip(spec)
    exports = [dict(e) for e in spec.data.get("nfs_exports") or []]
    if not exports:
        pytest.skip("no nfs_exports")
    path = export_path(spec, exports[0])
    # Before: this controller is allowed (the inventory's networks).
    assert nfs_list_allowed(ip, path, 3), f"{path} is not reachable before the test"

    # Read-only there: a read-write export to a subnet of a Samba share's folder is refused by the validation.
    elsewhere = [dict(e, networks=[OTHER_SUBNET], read_only=True) for e in exports]
    try:
        result = pyinfra_run("deploys/nfs.py", "--limit", spec.name, "--data", "nfs_exports=" + json.dumps(elsewhere))
        assert not [op for op in result["results"]["operations"] if op["error"]]
        assert effective_exports(spec, host)[path]["clients"].keys() == {OTHER_SUBNET}

        v3 = nfs("nfs-ls", url(ip, path, version=3))
        v4 = nfs("nfs-ls", url(ip, path, version=4))
        # The export exists and the server answers (mount protocol / v4 pseudo fs), but refuses.
        assert v3.returncode != 0 and "MNT3ERR_ACCES" in v3.stdout + v3.stderr, v3.stdout + v3.stderr
        assert v4.returncode != 0, v4.stdout + v4.stderr
        write = nfs("nfs-cp", "/etc/hostname", url(ip, path, "refused.txt", 4))
        assert write.returncode != 0
        assert not host.file(join(path, "refused.txt")).exists
    finally:
        pyinfra_run("deploys/nfs.py", "--limit", spec.name)
    # After: the inventory's networks again - the same client gets in over v3 and v4.
    assert nfs_list_allowed(ip, path, 3)
    assert nfs_list_allowed(ip, path, 4)


def refused_samba_user(spec) -> tuple[str, str, str] | None:
    """(share, user, password): a Samba user the inventory keeps out of a share (valid_users)."""
    users = spec.data.get("samba_users") or {}
    for share in spec.data.get("samba_shares") or []:
        outside = sorted(set(users) - set(share.get("valid_users") or users))
        if outside:
            return share, outside[0], users[outside[0]]
    return None


def smbclient_as(spec, share: str, user: str, password: str, commands: str, cwd: str):
    fd, auth = tempfile.mkstemp(prefix="hc-smb-auth-")
    with os.fdopen(fd, "w") as f:
        f.write(f"username = {user}\npassword = {password}\n")
    try:
        return subprocess.run(["smbclient", f"//{node_ip(spec)}/{share}", "-A", auth, "-c", commands], capture_output=True, text=True, timeout=60, cwd=cwd)
    finally:
        os.unlink(auth)


def nfs_write_refused(ip: str, path: str, version: int, uid: int, wait: float = GRACE_WAIT) -> str:
    """nfs-cp as `uid` must fail for a read-only export (retried while the server is in its
    grace period, so the refusal is the export's, not the restart's); the client's output."""
    deadline = time.monotonic() + wait
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "payload.txt"
        local.write_text("must not land\n")
        while True:
            target = f"nfs://{ip}{path.rstrip('/')}/hc-nfs-v{version}-refused.txt?uid={uid}&gid={uid}" + ("&version=4" if version == 4 else "")
            proc = nfs("nfs-cp", str(local), target)
            out = proc.stdout + proc.stderr
            assert proc.returncode != 0, f"a write over v{version} to the read-only {path} succeeded"
            if "ROFS" in out or "ACCES" in out or "Read-only" in out or "Permission denied" in out:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"nfs-cp over v{version} failed, but not as a read-only refusal: {out}")
            time.sleep(3)


@pytest.mark.destructive
def test_default_export_is_read_only_and_keeps_a_samba_refused_user_out(nas, pyinfra_run, tmp_path):
    """The schema's default export (only its networks pointed at the lab: 192.168.1.0/24 is not
    here): readable, but no write over v3 or v4, whatever uid the client claims - a user Samba
    keeps out of the folder (bob on `data`) cannot change it through NFS either."""
    from homecloud.layers.nfs import LAYER

    spec, host = nas[0]
    ip = node_ip(spec)
    default = LAYER.default("nfs_exports")
    assert all(export.get("read_only", True) for export in default), default
    lab_net = str(ipaddress.ip_interface(f"{ip}/{spec.data['network_prefix']}").network)
    exports = [dict(export, networks=[lab_net]) for export in default]
    keeper = f"hc-nfs-keep-{uuid.uuid4().hex[:8]}.txt"
    path = export_path(spec, exports[0])
    host.check_output(f"printf 'kept\\n' > {join(path, keeper)} && chown {spec.data['dnas_uid']}:{spec.data['dnas_gid']} {join(path, keeper)}")
    try:
        result = pyinfra_run("deploys/nfs.py", "--limit", spec.name, "--data", "nfs_exports=" + json.dumps(exports))
        assert not [op for op in result["results"]["operations"] if op["error"]]
        clients = effective_exports(spec, host)[path]["clients"]
        assert clients.keys() == {lab_net} and clients[lab_net]["access"] == "ro", clients

        refused = refused_samba_user(spec)
        assert refused, "the lab inventory has no Samba user kept out of a share"
        share, user, password = refused
        assert normpath(join(spec.data["dnas_path"], share["path"])) == path, "the refused user's share is not the default export's folder"
        (tmp_path / "bob.txt").write_text("bob was here\n")
        smb = smbclient_as(spec, share["name"], user, password, "put bob.txt", str(tmp_path))
        # Refused: not a valid user of the share (or, after tests/lab/test_secrets.py rotated a
        # password this session's inventory data does not know yet, a failed logon).
        out = smb.stdout + smb.stderr
        assert smb.returncode != 0 and ("NT_STATUS_ACCESS_DENIED" in out or "NT_STATUS_LOGON_FAILURE" in out), out

        bob_uid = int(host.check_output(f"id -u {user} 2>/dev/null || echo 4242"))
        for version in (3, 4):
            assert nfs_list_allowed(ip, path, version), f"the default export {path} is not readable over v{version}"
            assert nfs_read(ip, path, keeper, version) == "kept\n"
            for uid in (bob_uid, 0, spec.data["dnas_uid"]):
                nfs_write_refused(ip, path, version, uid)
        assert not host.run(f"ls {path}/hc-nfs-v*-refused.txt").stdout.strip()
        assert host.file(join(path, keeper)).content_string == "kept\n"
    finally:
        host.run(f"rm -f {join(path, keeper)} {path}/hc-nfs-v*-refused.txt")
        pyinfra_run("deploys/nfs.py", "--limit", spec.name)
    assert nfs_list_allowed(ip, path, 3)


def test_helper_services_listen_on_the_fixed_ports(nas):
    """rpcinfo on each node: MOUNT, NLM and statd registered on nfs_mountd_port, nfs_lockd_port
    and nfs_statd_port (TCP; UDP where the service offers it); no rquota service."""
    for spec, host in nas:
        registered = set()
        for line in host.check_output("/usr/sbin/rpcinfo -p").splitlines()[1:]:
            fields = line.split()
            registered.add((fields[4], fields[2], int(fields[3])))
        wanted = {
            "mountd": spec.data["nfs_mountd_port"],
            "nlockmgr": spec.data["nfs_lockd_port"],
            "status": spec.data["nfs_statd_port"],
        }
        for service, port in wanted.items():
            ports = {p for s, proto, p in registered if s == service and proto == "tcp"}
            assert ports == {port}, f"{spec.name}: {service} is registered on TCP {ports}, not {port}: {sorted(registered)}"
        assert not [r for r in registered if r[0] == "rquotad"], f"{spec.name}: rquotad is registered"


def kernel_nfsd(host) -> bool:
    """The kernel has an NFS server: nfsd registered, or loadable as a module."""
    return host.run("grep -qw nfsd /proc/filesystems || modinfo nfsd > /dev/null 2>&1").rc == 0


@pytest.mark.destructive
def test_kernel_backend(nas, pyinfra_run):
    spec, host = nas[0]
    if not kernel_nfsd(host):
        pytest.skip(
            "the kernel of this lab has no NFS server (nfsd is not built in and modules cannot be loaded): "
            "nfs-kernel-server cannot run here; this test runs in the Vagrant lab (VMs with their own kernel)"
        )
    original = spec.data.get("nfs_backend")
    try:
        if original != "kernel":
            result = pyinfra_run("deploys/nfs.py", "--limit", spec.name, "--data", "nfs_backend=kernel")
            assert not [op for op in result["results"]["operations"] if op["error"]]
        exports = effective_exports(spec, host, backend="kernel")
        for export in spec.data.get("nfs_exports") or []:
            client_opts = exports[export_path(spec, export)]["clients"]
            assert set(client_opts) == set(export["networks"])
            assert all(c["squash"] == "all" and c["anonuid"] == spec.data["dnas_uid"] for c in client_opts.values())
        written = prove_exports([(spec, host)])
        for _, _, path, name, _ in written:
            host.run(f"rm -f {join(path, name)}")
        again = pyinfra_run("deploys/nfs.py", "--limit", spec.name, *(["--data", "nfs_backend=kernel"] if original != "kernel" else []))
        assert not [op["name"] for op in again["results"]["operations"] if op["success"]], "kernel backend: second run changed something"
    finally:
        if original != "kernel":
            pyinfra_run("deploys/nfs.py", "--limit", spec.name)


def test_second_run_changes_nothing(nas, pyinfra_run):
    result = pyinfra_run("deploys/nfs.py")
    changed = {op["name"]: op["success"] for op in result["results"]["operations"] if op["success"]}
    errors = {op["name"]: op["error"] for op in result["results"]["operations"] if op["error"]}
    assert not errors, errors
    assert not changed, f"a second run changed: {changed}"


def test_a_restart_lost_with_a_failed_run_happens_on_the_next_run(nas, pyinfra_run):
    """A run that wrote the NFS server's configuration and died before the restart (here: the
    file is touched): the next run restarts the server, the one after changes nothing."""
    spec, host = nas[0]
    backend = spec.data.get("nfs_backend", "ganesha")
    config, unit = ("/etc/ganesha/ganesha.conf", "nfs-ganesha") if backend == "ganesha" else ("/etc/nfs.conf.d/homecloud.conf", "nfs-server")
    show = f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}"
    before = host.run(show).stdout.strip()
    assert host.run(f"touch {config}").rc == 0
    result = pyinfra_run("deploys/nfs.py", "--limit", spec.name)
    assert result["returncode"] == 0
    changed = [op["name"] for op in result["results"]["operations"] if op["success"]]
    assert any(name.endswith("runs its current configuration") or "current helper ports" in name for name in changed), changed
    assert host.run(show).stdout.strip() != before, f"{unit} was not restarted"
    prove_exports(nas)
    again = pyinfra_run("deploys/nfs.py", "--limit", spec.name)
    assert not [op["name"] for op in again["results"]["operations"] if op["success"]], "the restart is not idempotent"
