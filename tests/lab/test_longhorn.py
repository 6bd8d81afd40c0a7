"""
Longhorn's host prerequisites on the local nspawn lab: the layer cannot pass here (the kernel
of this machine has no iSCSI, no device-mapper driver, no loadable modules, no NFS client), so
this proves that the preflight fact tells the truth:

deploys/longhorn.py runs on node1 with Longhorn forced on and a Longhorn disk (the lab's blank
disk, formatted ext4 and mounted at longhorn_data_path). It must install what can be installed,
then fail with the list of what is still wrong; and that list must be exactly what an
independent look says: the kernel facts read on the controller (same kernel, seen from the
host, where /sys/module and /proc/misc are complete), the packages from dpkg, the commands from
the shell, the filesystem from stat. A second run changes nothing. The test then puts node1
back (disk blank again, files removed).

The lab inventory itself keeps Longhorn off, so deploys/all.py converges there.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from facts.longhorn import COMMANDS, MODULES, PACKAGES, LonghornPreflight
from lab import results

LABEL = "hc-longhorn"
DATA_PATH = "/var/lib/longhorn"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_text(inventory, *args) -> tuple[int, str, dict[str, str]]:
    """Run the Longhorn deploy; (exit code, log, {operation: status on node1}). pyinfra writes no
    JSON when every host failed, so this reads the log: Success / No changes / Error."""
    argv = [results.pyinfra_bin(), "-y", str(inventory), "deploys/longhorn.py", *args]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    statuses: dict[str, str] = {}
    current = None
    for line in log.splitlines():
        match = re.match(r"--> Starting operation: (.*?)\s*$", line)
        if match:
            current = match.group(1)
            continue
        match = re.match(r"\s*\[node1\] (Success|No changes|Error)", line)
        if match and current:
            statuses[current] = match.group(1)
    return proc.returncode, log, statuses


def _host_has_module(name: str) -> bool:
    """Loaded or built into the controller's kernel (the nodes share it)."""
    if Path(f"/sys/module/{name}").is_dir():
        return True
    builtin = Path(f"/lib/modules/{os.uname().release}/modules.builtin")
    return builtin.is_file() and f"/{name}.ko" in builtin.read_text()


def _expected_kernel_failures() -> set[str]:
    failing = set()
    for module in MODULES:
        if not _host_has_module(module) and subprocess.run(["modprobe", "-n", "-q", module]).returncode != 0:
            failing.add(f"module:{module}")
    if "device-mapper" not in Path("/proc/misc").read_text():
        failing.add("kernel:device-mapper")
    if "nfs4" not in Path("/proc/filesystems").read_text() and not Path("/sys/module/nfsv4").is_dir():
        failing.add("kernel:nfs4")
    if not (Path("/sys/module/scsi_transport_iscsi").is_dir() or Path("/sys/class/iscsi_transport").is_dir()):
        failing.add("service:iscsid")  # iscsid cannot open NETLINK_ISCSI without it
    return failing


@pytest.fixture
def node1(lab_mode, lab_api):
    if lab_mode != "local":
        pytest.skip("forces Longhorn on a lab node: local nspawn lab only")
    node = lab_api.node("node1")
    blank = [d for d in node["disks"] if d["role"] == "blank"]
    if not blank:
        pytest.skip("node1 has no blank lab disk")
    device = blank[0]["device"]
    if lab_api.run("node1", f"blkid -p {device} >/dev/null 2>&1; echo $?").stdout.strip() != "2":
        pytest.skip(f"the lab's blank disk {device} is not blank (another test used it)")
    yield {"device": device, "by_id": blank[0]["by_id"]}
    # Put node1 back: Longhorn files and mount gone, the disk blank again.
    unit = lab_api.run("node1", f"systemd-escape -p --suffix=mount {DATA_PATH}").stdout.strip()
    lab_api.run(
        "node1",
        f"systemctl disable --now {unit} 2>/dev/null; rm -f /etc/systemd/system/{unit}; systemctl daemon-reload; "
        f"umount {DATA_PATH} 2>/dev/null; rmdir {DATA_PATH} 2>/dev/null; wipefs -a -q {device}; "
        f"rm -f /dev/disk/by-label/{LABEL} /etc/modules-load.d/longhorn.conf; "
        "systemctl disable iscsid.service 2>/dev/null; true",
        check=False,
    )


@pytest.mark.destructive
def test_longhorn_preflight_reports_exactly_what_this_kernel_lacks(node1, lab_api, lab_inventory):
    args = [
        "--limit", "node1",
        "--data", "longhorn_enabled=True",
        "--data", f"longhorn_device=LABEL={LABEL}",
        "--data", "longhorn_format=True",
        "--data", f"longhorn_blank_device={node1['by_id']}",
        "--data", f"longhorn_data_path={DATA_PATH}",
    ]
    code, log, statuses = _run_text(lab_inventory, *args)
    preflight = next(name for name in statuses if name.startswith("longhorn | Longhorn preflight"))
    # Everything before the preflight worked; the preflight failed the host with its list.
    assert code != 0
    assert {n: st for n, st in statuses.items() if st == "Error"} == {preflight: "Error"}, log[-4000:]
    assert len(statuses) == 7, statuses
    assert "Longhorn preflight failed" in log

    fact = LonghornPreflight()
    out = lab_api.run("node1", fact.command(DATA_PATH))
    checks = fact.process(out.stdout.splitlines())
    failing = {name for name, check in checks.items() if not check["ok"]}

    # Independent look at the same things.
    expected = _expected_kernel_failures()
    assert expected, "this test expects a kernel without iSCSI/device-mapper (the lab host); see lab-notes"
    for package in PACKAGES:
        status = lab_api.run("node1", f"dpkg-query -W -f='${{Status}}' {package}", check=False).stdout
        if status != "install ok installed":
            expected.add(f"package:{package}")
    for command in COMMANDS:
        if lab_api.run("node1", f"command -v {command}", check=False).returncode != 0:
            expected.add(f"command:{command}")
    fstype = lab_api.run("node1", f"stat -f -c %T {DATA_PATH}").stdout.strip()
    if fstype not in ("ext2/ext3", "xfs"):
        expected.add("data-path")
    if lab_api.run("node1", "dpkg-query -W -f='${Status}' multipath-tools", check=False).stdout == "install ok installed":
        expected.add("multipathd")

    assert failing == expected, {n: checks[n] for n in failing ^ expected if n in checks}
    # What must pass here for real: the packages were installed, the disk is ext4 and mounted.
    assert {f"package:{p}" for p in PACKAGES}.isdisjoint(failing)
    assert checks["data-path"] == {"ok": True, "detail": f"ext4 at {DATA_PATH}"}
    assert lab_api.run("node1", f"findmnt -n -o SOURCE,FSTYPE {DATA_PATH}").stdout.split()[1] == "ext4"
    # The failure list names each failing check with its reason.
    for name in failing:
        assert f"{name}: {checks[name]['detail']}" in log
    if "service:iscsid" in failing:
        assert "iSCSI" in checks["service:iscsid"]["detail"] or "NETLINK" in checks["service:iscsid"]["detail"]

    # Re-run: nothing changes; the same preflight failure.
    code, log, statuses = _run_text(lab_inventory, *args)
    assert code != 0
    assert statuses == {**{n: "No changes" for n in statuses if n != preflight}, preflight: "Error"}, log[-4000:]


def test_longhorn_off_in_the_lab_inventory_queues_nothing(lab_mode, pyinfra_run):
    if lab_mode != "local":
        pytest.skip("the lab inventory keeps Longhorn off; real clusters may have it on")
    run = pyinfra_run("deploys/longhorn.py")
    assert run["returncode"] == 0 and results.operations(run) == [], results.summary(run)
