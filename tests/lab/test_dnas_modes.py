"""
What the NAS writes is for the dnas owner and its group only: a file written through Samba,
through NFS (the libnfs client) and received through Syncthing on the other dnas node has no
permission for others, and a local account that is not in the dnas group cannot read it nor
list the data folder. The folders are 0770 with a default ACL, so even a writer asking for
0644 (as an NFS client with umask 022 does) gets 0660.

    pytest --lab=local tests/lab/test_dnas_modes.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from posixpath import join, normpath

import pytest

from homecloud.model import node_ip

pytestmark = pytest.mark.skipif(
    shutil.which("smbclient") is None or shutil.which("nfs-cp") is None,
    reason="smbclient and libnfs-utils (nfs-cp) are needed on the controller",
)

OUTSIDER = "hc-outsider"
WAIT = 90


@pytest.fixture(scope="module")
def nas(deployed, dnas_nodes):
    pairs = dnas_nodes("samba_enabled")
    if len(pairs) < 2 or not all(spec.data.get("nfs_enabled") and spec.data.get("syncthing_enabled") for spec, _ in pairs):
        pytest.skip("needs two dnas nodes with Samba, NFS and Syncthing")
    for _, host in pairs:
        host.check_output(f"id {OUTSIDER} >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin {OUTSIDER}")
    yield pairs
    for _, host in pairs:
        host.run(f"userdel {OUTSIDER}")


def data_folder(spec) -> str:
    return normpath(join(spec.data["dnas_path"], "data"))


def assert_private(spec, host, path: str, how: str) -> None:
    mode, group = host.check_output(f"stat -c '%a %G' {path}").split()
    assert int(mode, 8) & 0o007 == 0, f"{spec.name}: {path} ({how}) is mode {mode}: others may read it"
    assert group == spec.data["dnas_user"], f"{spec.name}: {path} ({how}) has group {group}"
    read = host.run(f"runuser -u {OUTSIDER} -- cat {path}")
    assert read.rc != 0, f"{spec.name}: {OUTSIDER} reads {path} ({how})"


def wait_for(host, path: str) -> None:
    deadline = time.monotonic() + WAIT
    while not host.file(path).exists:
        assert time.monotonic() < deadline, f"{path} never arrived"
        time.sleep(1)


def smb_put(spec, share: str, local: Path) -> subprocess.CompletedProcess:
    users = spec.data["samba_users"]
    share_def = next(s for s in spec.data["samba_shares"] if s["name"] == share)
    user = (share_def.get("valid_users") or sorted(users))[0]
    fd, auth = tempfile.mkstemp(prefix="hc-smb-auth-")
    with os.fdopen(fd, "w") as f:
        f.write(f"username = {user}\npassword = {users[user]}\n")
    try:
        return subprocess.run(
            ["smbclient", f"//{node_ip(spec)}/{share}", "-A", auth, "-c", f"put {local.name}"],
            capture_output=True, text=True, timeout=60, cwd=local.parent,
        )
    finally:
        os.unlink(auth)


def test_folders_are_0770_for_the_dnas_group(nas):
    for spec, host in nas:
        for path in (spec.data["dnas_path"], data_folder(spec)):
            mode, owner = host.check_output(f"stat -c '%a %U:%G' {path}").split()
            assert (mode, owner) == ("770", f"{spec.data['dnas_user']}:{spec.data['dnas_user']}"), (spec.name, path, mode, owner)
            assert host.run(f"runuser -u {OUTSIDER} -- ls {path}").rc != 0, f"{spec.name}: {OUTSIDER} lists {path}"
        # A writer asking for 0644 (umask 022, as NFS clients do) gets 0660 from the default ACL.
        probe = join(data_folder(spec), f"hc-mode-{uuid.uuid4().hex[:8]}.txt")
        host.check_output(f"runuser -u {spec.data['dnas_user']} -- sh -c 'umask 022; echo x > {probe}'")
        try:
            assert host.check_output(f"stat -c %a {probe}") == "660"
        finally:
            host.run(f"rm -f {probe}")


def test_files_written_by_samba_nfs_and_syncthing_are_private(nas, tmp_path):
    (spec, host), (other_spec, other_host) = nas[0], nas[1]
    folder = data_folder(spec)
    share = next(s["name"] for s in spec.data["samba_shares"] if normpath(join(spec.data["dnas_path"], s["path"])) == folder)
    export = next(e for e in spec.data["nfs_exports"] if normpath(join(spec.data["dnas_path"], e["path"])) == folder and e.get("read_only") is False)
    assert export, "the lab inventory has no read-write NFS export of the data folder"
    written = []
    try:
        via_smb = tmp_path / f"hc-mode-smb-{uuid.uuid4().hex[:8]}.txt"
        via_smb.write_text("through Samba\n")
        put = smb_put(spec, share, via_smb)
        assert put.returncode == 0, put.stdout + put.stderr
        written.append(via_smb.name)
        assert_private(spec, host, join(folder, via_smb.name), "written through Samba")

        via_nfs = f"hc-mode-nfs-{uuid.uuid4().hex[:8]}.txt"
        local = tmp_path / "payload.txt"
        local.write_text("through NFS\n")
        deadline = time.monotonic() + WAIT
        while True:  # retried through a grace period after a restart of the NFS server
            proc = subprocess.run(["nfs-cp", str(local), f"nfs://{node_ip(spec)}{folder}/{via_nfs}"], capture_output=True, text=True, timeout=60)
            if proc.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        written.append(via_nfs)
        assert_private(spec, host, join(folder, via_nfs), "written through NFS")

        # Both reach the other node through Syncthing: private there too.
        for name in written:
            received = join(data_folder(other_spec), name)
            wait_for(other_host, received)
            assert_private(other_spec, other_host, received, "received through Syncthing")
    finally:
        for name in written:
            host.run(f"rm -f {join(folder, name)}")
