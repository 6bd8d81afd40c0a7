"""
Tests of the lab itself (--lab=local), and of how a deploy behaves when one node is broken.

Most tests use a scratch instance of their own (SCRATCH, 2 nodes: "t" + a tag derived from
$HOMECLOUD_LAB and the pid) so they can crash, reset and probe nodes without disturbing the session's lab;
the no-trace test brings up and removes yet another instance (NOTRACE, "n" + the tag) and
compares the host before and after.
"""

from __future__ import annotations

import json
import subprocess
import os
import re
import time
import zlib
from pathlib import Path

import pytest

from lab import core, results
from lab.api import Lab
from lab.util import STATE_ROOT, all_pids, proc_cmdline

# Instances of their own, named after the session's instance and this process, so that two
# test sessions on one host never touch each other's scratch labs (both are removed at the end;
# after a killed session, `ls /var/lib/homecloud-lab` shows what to `HOMECLOUD_LAB=... python -m lab down`).
_TAG = format(zlib.crc32(f"{core.instance_name()}/{os.getpid()}".encode()) & 0xFFFFF, "05x")
SCRATCH = f"t{_TAG}"
NOTRACE = f"n{_TAG}"
LAB_NAME = re.compile(r"^([a-z][a-z0-9]{0,7})-(br|node\d+)$")


@pytest.fixture(scope="module")
def local_only(lab_mode):
    if lab_mode != "local":
        pytest.skip("tests of the local lab itself: --lab=local")
    if os.geteuid() != 0:
        pytest.skip("the local lab needs root")


@pytest.fixture(scope="module")
def scratch(local_only):
    lab = Lab(SCRATCH)
    lab.down()
    t0 = time.monotonic()
    lab.up(nodes=2)
    print(f"scratch lab up in {time.monotonic() - t0:.1f} s")
    try:
        yield lab
    finally:
        lab.down()


# --- Snapshots of the host, for the no-trace test ---------------------------------------------


def _other_instance(name: str, instance: str) -> bool:
    m = LAB_NAME.match(name)
    return bool(m) and m.group(1) != instance


def _other_path(text: str, instance: str) -> bool:
    m = re.search(re.escape(str(STATE_ROOT)) + r"/([a-z][a-z0-9]{0,7})(/|$)", text)
    return bool(m) and m.group(1) != instance


def host_snapshot(instance: str) -> dict[str, set]:
    """What the lab could leave behind, minus what belongs to other lab instances (other helpers'
    labs may come and go on this host meanwhile)."""
    links = {n for n in os.listdir("/sys/class/net") if not _other_instance(n, instance)}
    netns = {n for n in core._netns_list() if not _other_instance(n, instance)}
    with open("/proc/self/mounts", encoding="utf-8") as f:
        mounts = {
            point for point in (line.split()[1] for line in f if not _other_path(line, instance))
            # A node's network namespace is a mount under /run/netns, named after its instance.
            if not (point.startswith("/run/netns/") and _other_instance(point.rsplit("/", 1)[-1], instance))
        }
    loops = {
        (loop["name"], loop.get("back-file") or "")
        for loop in core._losetup_list()
        if not _other_path(loop.get("back-file") or "", instance)
    }
    procs = set()
    for pid in all_pids():
        cmd = " ".join(proc_cmdline(pid))
        if not any(k in cmd for k in ("systemd-nspawn", "homecloud-lab", "lab.aptproxy")):
            continue
        if _other_path(cmd, instance):
            continue
        apt_proxy = re.search(r"lab\.aptproxy --instance ([a-z0-9]+)", cmd)
        if apt_proxy and apt_proxy.group(1) != instance:
            continue
        procs.add((pid, cmd))
    tables = set()
    if core.shutil.which("nft"):
        out = core.sh(["nft", "list", "tables"], check=False).stdout
        tables = {t for t in out.split() if t.startswith(f"homecloud_lab_{instance}")}
    cgroups = {
        str(c) for tree in core.CGROUP_TREES for c in Path(tree, core.CGROUP_PARENT).glob(f"{instance}-*")
    }
    return {"links": links, "netns": netns, "mounts": mounts, "loops": loops, "procs": procs, "nft": tables,
            "cgroups": cgroups}


def test_up_down_leave_no_trace(local_only):
    lab = Lab(NOTRACE)
    lab.down()
    before = host_snapshot(NOTRACE)
    t0 = time.monotonic()
    state = lab.up(nodes=2)
    up_seconds = time.monotonic() - t0
    during = host_snapshot(NOTRACE)
    # The lab really created things (so the comparison below can fail).
    assert f"{NOTRACE}-br" in during["links"] and f"{NOTRACE}-node1" in during["netns"]
    assert any(str(core.state_dir(NOTRACE)) in m for m in during["mounts"])
    assert any(str(core.state_dir(NOTRACE)) in b for _, b in during["loops"])
    assert any("systemd-nspawn" in cmd for _, cmd in during["procs"])
    assert any(f"lab.aptproxy --instance {NOTRACE}" in cmd for _, cmd in during["procs"])
    assert any(c.endswith(f"{NOTRACE}-node1") for c in during["cgroups"])
    assert lab.run("node2", "hostname").stdout.strip() == "node2"
    assert state["timings"]["nodes_ready_seconds"] > 0
    down_seconds = lab.down()
    again = lab.down()  # safe to run twice
    after = host_snapshot(NOTRACE)
    print(f"up {up_seconds:.1f} s, down {down_seconds:.1f} s, second down {again:.1f} s")
    leftovers = {k: sorted(after[k] - before[k]) for k in before if after[k] - before[k]}
    assert not leftovers, f"`down` left: {json.dumps(leftovers, indent=1, default=str)}"
    assert not core.state_dir(NOTRACE).exists()
    assert not lab.is_up()


def test_nodes_have_their_own_identity(scratch):
    ids = {n["name"]: scratch.run(n["name"], "cat /etc/machine-id; hostname; cat /etc/ssh/ssh_host_ed25519_key.pub").stdout
           for n in scratch.nodes()}
    machine_ids = {v.split()[0] for v in ids.values()}
    host_keys = {v.split()[-2] for v in ids.values()}
    assert len(machine_ids) == len(ids) and len(host_keys) == len(ids), ids
    for name, out in ids.items():
        assert out.split()[1] == name
    state = scratch.run("node1", "systemctl is-system-running; systemctl --failed --no-legend", check=False).stdout
    assert state.split()[0] in ("running", "degraded"), state


def test_nodes_reach_only_the_lab(scratch):
    ctrl = scratch.controller_ip()
    node2 = scratch.node("node2")["ip"]
    out = scratch.run("node1", "ip -4 route; cat /etc/resolv.conf").stdout
    assert "default" not in out and "nameserver" not in out, out
    # Nothing outside the subnet is routable: the kernel refuses before sending anything.
    probe = scratch.run("node1", "ip route get 192.0.2.1", check=False)
    assert probe.returncode != 0 and "unreachable" in probe.stderr.lower(), probe
    assert scratch.run("node1", f"ping -c1 -W2 {node2} && ping -c1 -W2 {ctrl}", check=False).returncode == 0
    # The host itself: only the apt proxy port answers on the controller address.
    assert scratch.run("node1", f"timeout 5 bash -c '</dev/tcp/{ctrl}/3142'", check=False).returncode == 0
    if core.shutil.which("nft"):
        blocked = scratch.run("node1", f"timeout 3 bash -c '</dev/tcp/{ctrl}/22'", check=False)
        assert blocked.returncode != 0, "the host's sshd is reachable from a node"
    assert Path(f"/proc/sys/net/ipv4/conf/{SCRATCH}-br/forwarding").read_text().strip() == "0"
    # The proxy serves the Debian archive only.
    refused = scratch.run("node1", f"curl -s -o /dev/null -w '%{{http_code}}' -x http://{ctrl}:3142 http://example.com/", check=False)
    assert refused.stdout.strip() in ("403", "404", "503"), refused


def test_apt_works_through_the_proxy(scratch):
    t0 = time.monotonic()
    proc = scratch.run(
        "node2",
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends hello && hello",
        check=False, timeout=600,
    )
    print(f"apt-get update + install hello: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0 and "Hello, world!" in proc.stdout, proc.stderr[-2000:]


def test_data_disks(scratch):
    node1 = scratch.node("node1")
    disks = {d["role"]: d for d in node1["disks"]}
    assert set(disks) == {"data", "spare", "blank"}
    assert [d["role"] for d in scratch.node("node2")["disks"]] == ["data"]
    data, spare, blank = disks["data"], disks["spare"], disks["blank"]
    run = lambda cmd, **kw: scratch.run("node1", cmd, **kw)  # noqa: E731
    # A real block device with a real filesystem, found by label and UUID like on a board.
    assert run("findfs LABEL=homecloud-data").stdout.strip() == data["device"]
    assert run(f"findfs UUID={data['uuid']}").stdout.strip() == data["device"]
    assert run(f"readlink -f /dev/disk/by-label/homecloud-data /dev/disk/by-uuid/{data['uuid']}").stdout.split() == [data["device"]] * 2
    assert "TYPE=\"ext4\"" in run(f"blkid {data['device']}").stdout
    # A systemd mount unit by label works (no udev device units in a container).
    unit = "[Unit]\nDescription=lab test\n[Mount]\nWhat=/dev/disk/by-label/homecloud-data\nWhere=/mnt/labtest\nType=ext4\n"
    run(f"printf '{unit}' > /etc/systemd/system/mnt-labtest.mount && systemctl daemon-reload && systemctl start mnt-labtest.mount")
    try:
        mounted = run("findmnt -n -o SOURCE,FSTYPE /mnt/labtest").stdout.split()
        assert mounted == [data["device"], "ext4"]
        run("echo kept > /mnt/labtest/file && sync")
    finally:
        run("systemctl stop mnt-labtest.mount; rm -f /etc/systemd/system/mnt-labtest.mount; systemctl daemon-reload", check=False)
    # The spare device holds data: a file on an ext4 filesystem labelled homecloud-spare.
    assert run("findfs LABEL=homecloud-spare").stdout.strip() == spare["device"]
    text = run(f"mkdir -p /mnt/spare && mount -o ro {spare['device']} /mnt/spare && cat /mnt/spare/{core.SPARE_FILE}; umount /mnt/spare").stdout
    assert text == core.SPARE_TEXT
    # The blank device has nothing on it; a filesystem made on it gets its links (like udev).
    assert run(f"blkid -p {blank['device']}", check=False).returncode == 2
    assert run(f"readlink -f {blank['by_id']}").stdout.strip() == blank["device"]
    run(f"mkfs.ext4 -q -L labtest-blank {blank['device']}")
    assert _eventually(lambda: run("readlink -f /dev/disk/by-label/labtest-blank", check=False).stdout.strip() == blank["device"])
    run(f"wipefs -q -a {blank['device']}")
    assert _eventually(lambda: run("test -e /dev/disk/by-label/labtest-blank", check=False).returncode != 0)


def _eventually(check, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return check()


def test_crash_poweroff_start_cut_link(scratch):
    ip2 = scratch.node("node2")["ip"]
    ping = lambda: scratch.run("node1", f"ping -c1 -W1 {ip2}", check=False).returncode == 0  # noqa: E731
    scratch.run("node2", "echo before-crash > /root/persist && sync")
    mac = scratch.run("node2", "cat /sys/class/net/host0/address").stdout
    scratch.crash("node2")
    assert not scratch.is_running("node2") and not ping()
    assert not Path(f"/sys/class/net/{SCRATCH}-node2").exists()
    t0 = time.monotonic()
    scratch.start("node2")
    print(f"start after crash: {time.monotonic() - t0:.1f} s")
    assert ping()
    assert scratch.run("node2", "cat /root/persist; cat /sys/class/net/host0/address").stdout == "before-crash\n" + mac
    assert scratch.run("node2", "findfs LABEL=homecloud-data").returncode == 0
    # A clean poweroff runs the shutdown (the console log shows the final target).
    log = scratch.state_dir() / "logs" / "node2.log"
    size = log.stat().st_size
    scratch.poweroff("node2")
    assert not scratch.is_running("node2") and not ping()
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(size)
        shutdown = f.read()
    assert "Stopped" in shutdown and "final.target" in shutdown, shutdown[-2000:]
    scratch.start("node2")
    assert ping()
    scratch.cut_link("node2")
    try:
        assert not scratch.link_is_up("node2") and not ping()
        assert "NO-CARRIER" in scratch.console("node2", "ip link show host0").stdout
    finally:
        scratch.restore_link("node2")
    assert _eventually(ping)


def test_node_reboots_and_powers_itself_off(scratch):
    """`reboot` in a node boots it again (like a board); `poweroff` takes it off the network."""
    ip2 = scratch.node("node2")["ip"]
    # The container's PID 1 (its start time is in /proc/1/stat) is a new one after a reboot.
    init_before = scratch.run("node2", "echo kept > /root/reboot-test; cat /proc/1/stat").stdout
    scratch.run("node2", "systemctl reboot", check=False, timeout=20)
    assert _eventually(
        lambda: scratch.run("node2", "cat /proc/1/stat", check=False).stdout not in ("", init_before), 90
    ), "node2 did not come back after reboot"
    assert scratch.run("node2", "cat /root/reboot-test").stdout == "kept\n"
    assert scratch.is_running("node2")
    scratch.run("node2", "systemctl poweroff", check=False, timeout=20)
    assert _eventually(lambda: not scratch.is_running("node2"), 30)
    assert _eventually(lambda: not Path(f"/sys/class/net/{SCRATCH}-node2").exists(), 10)
    assert scratch.run("node1", f"ping -c1 -W1 {ip2}", check=False).returncode != 0
    scratch.start("node2")
    assert scratch.run("node2", "cat /root/reboot-test").stdout == "kept\n"


def test_a_node_without_sshd_is_diagnosed_and_booted_again(scratch, capfd):
    """sshd gone on a running node: waiting for it diagnoses the node (so a CI failure says why),
    boots it once more, and the node answers again."""
    scratch.run("node2", "systemctl stop ssh.socket ssh.service 2>/dev/null; systemctl stop ssh.service")
    assert not core.ssh_ready(scratch.state(), scratch.node("node2"))
    scratch.start("node2", timeout=30)  # running: only waits; half of it spent, then the reboot
    err = capfd.readouterr().err
    assert "node2: sshd did not answer within 15 s; booting it once more" in err, err
    assert "tcp " in err and "ConnectionRefusedError" in err, err
    assert re.search(r"ssh\.service.*\n.*Active: inactive", err), err
    assert core.ssh_ready(scratch.state(), scratch.node("node2"))


def test_reset_gives_a_fresh_node(scratch):
    scratch.run("node2", "echo junk > /root/junk")
    old = scratch.run("node2", "cat /etc/machine-id").stdout
    seconds = scratch.reset(["node2"])
    print(f"reset node2: {seconds:.1f} s")
    probe = scratch.run("node2", "test -e /root/junk", check=False)
    assert probe.returncode == 1, probe
    assert scratch.run("node2", "cat /etc/machine-id").stdout != old
    assert scratch.run("node1", "hostname").stdout.strip() == "node1"  # untouched


# --- A broken node during a deploy (the session's lab) ------------------------------------------


@pytest.mark.destructive
def test_broken_node_fails_alone_and_recovers(deployed, pyinfra_run, lab_api, main_deploy_file):
    """sshd stopped on one node: the deploy fails for that host only, with a clear message,
    while the others converge; after the repair a re-run converges with no other changes."""
    victim = [n["name"] for n in lab_api.nodes() if n["groups"] == ["k3s_agents"]][-1]
    others = sorted(n["name"] for n in lab_api.nodes() if n["name"] != victim)
    lab_api.run(victim, "systemctl stop ssh")
    try:
        broken = pyinfra_run(main_deploy_file)
    finally:
        lab_api.console(victim, "systemctl start ssh")
    report = results.summary(broken)
    assert broken["returncode"] != 0, report
    assert results.failed_hosts(broken) == [victim], report
    assert re.search(rf"\[{victim}\] Could not connect", broken["stderr"]), report
    assert not results.errors(broken), report
    ran_on = {h for op in results.operations(broken) for h in op["success"] + op["no_change"]}
    assert ran_on == set(others), report
    assert results.changed(broken) == {}, report
    assert _eventually(lambda: lab_api.run(victim, "true", check=False).returncode == 0, 30)
    repaired = pyinfra_run(main_deploy_file)
    report = results.summary(repaired)
    assert repaired["returncode"] == 0 and not results.failed_hosts(repaired), report
    assert results.changed(repaired) == {}, report


# --- Names, inventory ---------------------------------------------------------------------------


def test_names_fit_the_interface_limit(local_only):
    longest = "abcdefgh"
    assert core.instance_name(longest) == longest
    names = [core.bridge_name(longest)] + [core.node_link(longest, n["name"]) for n in core.plan_nodes(core.MAX_NODES, True)]
    assert max(len(n) for n in names) <= 15, names
    for bad in ("abcdefghi", "Hc", "1hc", "h-c", "-"):
        with pytest.raises(core.LabError):
            core.instance_name(bad)
    plan = core.plan_nodes(8, False)
    assert [n["name"] for n in plan if "k3s_servers" in n["groups"]] == ["node1", "node2", "node3"]
    assert [n["name"] for n in plan if "dnas" in n["groups"]] == ["node1", "node2"]
    assert all(n["groups"] == ["k3s_agents"] for n in plan[3:])


def test_inventory_matches_the_lab(lab_api, inventory_hosts):
    by_name = {h["name"]: h for h in inventory_hosts}
    nodes = lab_api.nodes()
    assert sorted(by_name) == sorted(n["name"] for n in nodes)
    for n in nodes:
        data = by_name[n["name"]]["data"]
        assert data["ssh_hostname"] == data["node_ip"] == n["ip"]
        assert data["node_interface"] == n["interface"] == "host0"
        assert data["vip"] == lab_api.vip() and data["network_prefix"] == lab_api.prefix()
        assert set(n["groups"]) <= set(by_name[n["name"]]["groups"])
        # NFS read-write to the controller (the tests' client) only.
        assert data["nfs_exports"][0]["networks"] == [f"{lab_api.controller_ip()}/32"]
        assert data["k3s_install"] == "off" and data["longhorn_enabled"] is False
        if "dnas" in n["groups"]:
            assert data["dnas_device"] == "LABEL=homecloud-data"
            assert any(d["label"] == "homecloud-data" for d in n["disks"])


def test_inventory_refuses_a_lab_that_is_not_up(local_only):
    proc = subprocess.run(
        [results.pyinfra_bin(), "-y", "inventories/lab.py", "exec", "--", "true"],
        cwd=results.REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOMECLOUD_LAB": "hcnotup"},
    )
    assert proc.returncode != 0
    assert "lab is not up: run python -m lab up" in proc.stderr + proc.stdout
