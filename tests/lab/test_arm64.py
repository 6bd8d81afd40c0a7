"""
Every host layer on arm64 userland (qemu-user), the architecture of the Raspberry Pis homecloud
is for: the arm64 job's own lab (tests/lab/arm64_job.py: node1 amd64, node2 arm64, both dnas)
was brought up and deployed with deploys/all.py in the background while the other lab tests ran;
these tests run last and check it.

    bash scripts/test tests/lab/test_arm64.py        # the job alone (~10 min with a cached base)

The arm64 node runs without the host firewall (inventories/lab.py: qemu-user emulates no
netfilter netlink socket, so nft cannot load rules); the firewall is proven on amd64 nodes.
"""

from __future__ import annotations

import posixpath
import uuid

import pytest

from lab import results
from test_dnas_sync import _folder_path, _user, _wait, check_arm64_nas

# The job started with the session; the rest of the lab tier (~15 min) ran meanwhile. Past this
# the job is stuck (its own steps have timeouts too).
JOB_WAIT = 3000


@pytest.fixture(scope="module")
def arm_lab(arm64_job, make_testinfra_host):
    """The job's first deploy, checked: {"job", "hosts": [(name, data, testinfra host)], "arm": ...}."""
    if not arm64_job.wait(JOB_WAIT):
        pytest.fail(f"the arm64 job (lab `{arm64_job.instance}`) has not finished after {JOB_WAIT} s")
    if arm64_job.error:
        pytest.fail(f"the arm64 job (lab `{arm64_job.instance}`) failed:\n{arm64_job.error}", pytrace=False)
    first = arm64_job.first
    if first["returncode"] != 0 or results.errors(first) or results.failed_hosts(first):
        pytest.fail(f"the first deploys/all.py on the arm64 lab failed (whole log: {arm64_job.log_file}):\n" + results.summary(first), pytrace=False)
    inventory = results.inventory_hosts(results.REPO_ROOT / "inventories" / "lab.py", env=arm64_job.env)
    hosts = [(h["name"], h["data"], make_testinfra_host(h)) for h in inventory]
    arm = [x for x in hosts if x[1].get("node_arch") == "arm64"]
    assert arm, f"the arm64 job's lab has no arm64 node: {[h['name'] for h in inventory]}"
    print(f"\narm64 job (lab `{arm64_job.instance}`): " + ", ".join(f"{k} {v:.0f} s" for k, v in arm64_job.seconds.items()))
    return {"job": arm64_job, "hosts": hosts, "arm": arm[0]}


def test_arm64_node_is_arm64_userland(arm_lab):
    name, data, t = arm_lab["arm"]
    assert t.check_output("dpkg --print-architecture") == "arm64"
    assert "aarch64" in t.check_output("file -L /usr/bin/dpkg"), f"{name}: dpkg is not an arm64 binary"


def test_second_run_changes_nothing_on_arm64(arm_lab):
    job = arm_lab["job"]
    second = results.run_pyinfra(results.REPO_ROOT / "inventories" / "lab.py", results.REPO_ROOT / "deploys" / "all.py", env=job.env, timeout=1200)
    assert second["returncode"] == 0 and not results.errors(second), results.summary(second)
    assert results.changed(second) == {}, f"the second run changed: {results.changed(second)}"


def test_nas_services_run_arm64_binaries(arm_lab):
    name, data, t = arm_lab["arm"]
    units = check_arm64_nas(name, data, t)
    listening = t.check_output("ss -Hltn")
    if "smbd" in units:
        assert ":445 " in listening, f"{name}: nothing listens on 445 (Samba):\n{listening}"
    if "nfs-ganesha" in units:
        assert ":2049 " in listening, f"{name}: nothing listens on 2049 (NFS):\n{listening}"


def test_a_file_syncs_to_and_from_the_arm64_node(arm_lab):
    name, data, t = arm_lab["arm"]
    other, odata, ot = next(x for x in arm_lab["hosts"] if x[1].get("node_arch") != "arm64" and x is not arm_lab["arm"])
    for (src_name, src_data, src), (dst_name, dst_data, dst) in (((other, odata, ot), (name, data, t)), ((name, data, t), (other, odata, ot))):
        probe = f"arm64-{uuid.uuid4().hex[:8]}.txt"
        here, there = posixpath.join(_folder_path(src_data), probe), posixpath.join(_folder_path(dst_data), probe)
        src.check_output("runuser -u %s -- sh -c %s", _user(src_data), f"echo from-{src_name} > '{here}'")
        took = _wait(f"{probe} from {src_name} on {dst_name}", lambda: dst.file(there).exists and dst.file(there).content_string == f"from-{src_name}\n")
        print(f"\nfile written on {src_name} appeared on {dst_name} after {took:.2f} s")
        src.check_output("rm -f %s", here)
        _wait(f"delete of {probe} on {dst_name}", lambda: not dst.file(there).exists)
