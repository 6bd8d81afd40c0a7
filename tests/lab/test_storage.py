"""
The dnas data disk: mounted by its own systemd mount unit, the NAS services bound to it, the
mount back after a restart and after a reboot; a disk that holds a filesystem is never
formatted whatever the inventory says (the deploy stops with the reason, the file on it
stays); a blank disk is formatted when asked, and only then.

    pytest --lab=local -s tests/lab/test_storage.py

The lab's node1 has, besides its data disk (LABEL=homecloud-data), a disk that already holds
a filesystem and a file (LABEL=homecloud-spare) and a blank disk, both by
/dev/disk/by-id/homecloud-lab-<role> (lab/core.py).
"""

from __future__ import annotations

import json
import posixpath
import textwrap
import time

import pytest

from facts.storage import device_link
from lab import results

def _units_of_data(data) -> list[str]:
    units = []
    if data.get("syncthing_enabled", True):
        units.append(f"syncthing@{data.get('dnas_user', 'dnas')}")
    if data.get("samba_enabled", True):
        units.append("smbd")
    if data.get("nfs_enabled", True):
        units.append("nfs-server" if data.get("nfs_backend", "kernel") == "kernel" else "nfs-ganesha")
    return units


@pytest.fixture(scope="module")
def disks(deployed, inventory_hosts, testinfra_hosts):
    """[(name, data, testinfra host)] of the dnas nodes that have a data disk."""
    members = [h for h in inventory_hosts if "dnas" in h["groups"]]
    pairs = [(h["name"], h["data"], t) for h, t in zip(members, testinfra_hosts("dnas"))]
    with_disk = [p for p in pairs if p[1].get("dnas_device")]
    if not with_disk:
        pytest.skip("no dnas node has a dnas_device")
    return with_disk


def _mount(t, path: str) -> dict | None:
    out = t.run("findmnt -J -o SOURCE,FSTYPE,TARGET,OPTIONS --mountpoint %s", path)
    return json.loads(out.stdout)["filesystems"][0] if out.rc == 0 else None


def _check_mounted(name, data, t) -> str:
    path = data.get("dnas_path", "/srv/dnas")
    unit = t.check_output("systemd-escape -p --suffix=mount %s", path)
    device = t.check_output("readlink -f %s", device_link(data["dnas_device"]))
    mounted = _mount(t, path)
    assert mounted, f"{name}: nothing is mounted at {path}"
    assert mounted["source"] == device, f"{name}: {mounted['source']} is mounted at {path}, not {device}"
    assert mounted["fstype"] == data.get("dnas_fstype", "ext4")
    assert t.check_output("systemctl is-active %s", unit) == "active"
    return unit


def test_data_disk_mounted_by_its_unit(disks):
    for name, data, t in disks:
        path = data.get("dnas_path", "/srv/dnas")
        unit = _check_mounted(name, data, t)
        assert t.check_output("systemctl is-enabled %s", unit) == "enabled", f"{name}: {unit} does not mount at boot"
        options = _mount(t, path)["options"].split(",")
        for option in data.get("dnas_mount_options", "defaults").split(","):
            if option not in ("defaults",):
                assert option in options, f"{name}: mount option {option} missing: {options}"
        # The NAS services need the mount: started after it, stopped with it.
        for service in _units_of_data(data):
            requires = t.check_output("systemctl show -p RequiresMountsFor --value %s", service).split()
            after = t.check_output("systemctl show -p After --value %s", service).split()
            assert path in requires, f"{name}: {service} does not require {path} mounted ({requires})"
            assert unit in after, f"{name}: {service} is not ordered after {unit}"
        # The data on the disk belongs to the dnas user.
        assert t.file(path).user == data.get("dnas_user", "dnas")


@pytest.mark.destructive
def test_mount_restart_stop_and_reboot(disks, lab_api):
    name, data, t = disks[0]
    path = data.get("dnas_path", "/srv/dnas")
    syncthing = f"syncthing@{data.get('dnas_user', 'dnas')}"
    marker = posixpath.join(path, ".homecloud-test-marker")
    t.check_output("echo %s > %s", f"written at {time.time()}", marker)
    unit = _check_mounted(name, data, t)

    t.check_output("systemctl restart %s", unit)
    _check_mounted(name, data, t)
    assert t.file(marker).exists, "the file on the disk is gone after a restart of the mount"
    assert t.check_output("systemctl is-active %s", syncthing) == "active"

    # Unmounted, the services that write into it stop too; starting one brings the disk back.
    t.check_output("systemctl stop %s", unit)
    assert _mount(t, path) is None
    for service in _units_of_data(data):
        state = t.run("systemctl is-active %s", service).stdout.strip()
        assert state != "active", f"{service} still runs with {path} unmounted"
    assert not t.file(marker).exists
    t.check_output("systemctl start %s", syncthing)
    _check_mounted(name, data, t)
    assert t.file(marker).exists
    for service in _units_of_data(data):
        t.check_output("systemctl start %s", service)

    # A reboot: the unit mounts the disk at boot, Syncthing comes up with it.
    start = time.monotonic()
    lab_api.poweroff(name)
    lab_api.start(name)
    deadline = time.monotonic() + 90
    while t.run("systemctl is-active %s", syncthing).stdout.strip() != "active" and time.monotonic() < deadline:
        time.sleep(1)
    print(f"\n{name} rebooted; {syncthing} active {time.monotonic() - start:.1f} s after the poweroff")
    _check_mounted(name, data, t)
    assert t.file(marker).exists, "the file on the disk is gone after a reboot"
    t.check_output("rm -f %s", marker)


def _refused(pyinfra_run, deploy: str, *args: str) -> str:
    """Run a deploy that must stop with an OperationError; return pyinfra's output."""
    try:
        run = pyinfra_run(deploy, *args)
    except results.PyinfraRunError as e:  # pyinfra stops the run: no JSON results
        return str(e)
    assert run["returncode"] != 0 and results.errors(run), "the deploy did not stop:\n" + results.summary(run)
    return run["stderr"]


def _node_with(lab_api, role: str) -> tuple[str, dict]:
    for node in lab_api.nodes():
        for disk in node["disks"]:
            if disk["role"] == role:
                return node["name"], disk
    pytest.skip(f"the lab has no {role} disk")


def _spare_intact(lab_api, node: str, disk: dict) -> tuple[str, str]:
    """(sha256 of the whole device, the text of the file on it, read from a read-only mount)."""
    digest = lab_api.run(node, f"sha256sum {disk['by_id']}").stdout.split()[0]
    text = lab_api.run(
        node,
        f"d=$(mktemp -d) && mount -o ro {disk['by_id']} $d && cat $d/KEEP-ME.txt; rc=$?; umount $d; rmdir $d; exit $rc",
    ).stdout
    return digest, text


@pytest.mark.destructive
def test_disk_with_data_is_never_formatted(pyinfra_run, lab_api):
    node, spare = _node_with(lab_api, "spare")
    before = _spare_intact(lab_api, node, spare)
    assert "must never be formatted" in before[1]

    # As the blank disk to format, with formatting allowed.
    output = _refused(
        pyinfra_run, "deploys/dnas.py", "--limit", node,
        "--data", "dnas_format=True",
        "--data", "dnas_device=LABEL=homecloud-fresh",
        "--data", f"dnas_blank_device={spare['by_id']}",
    )
    assert f"{node}: refusing to format {spare['by_id']}" in output, output[-3000:]
    assert "homecloud-spare" in output
    message = next(line for line in output.splitlines() if "refusing to format" in line)
    print(f"\nthe deploy stopped with: {message.strip()}")

    # As the data disk itself, with another filesystem type asked for and formatting allowed.
    output = _refused(
        pyinfra_run, "deploys/dnas.py", "--limit", node,
        "--data", "dnas_format=True",
        # By UUID: its label is longer than xfs allows, which the validation would refuse first.
        "--data", f"dnas_device=UUID={spare['uuid']}",
        "--data", "dnas_fstype=xfs",
    )
    assert "holds filesystem ext4 labelled 'homecloud-spare'" in output, output[-3000:]

    assert _spare_intact(lab_api, node, spare) == before, "the disk that holds data was changed"


DEPLOY = """
from pyinfra import host
from operations import storage

if host.name == {node!r}:
    storage.filesystem(
        name="The blank disk gets ext4 (when allowed)",
        device="LABEL=hc-fresh",
        fstype="ext4",
        label="hc-fresh",
        format={allow},
        blank_device={by_id!r},
    )
    storage.mount(
        name="The new disk mounted",
        device="LABEL=hc-fresh",
        path="/srv/hc-fresh",
        fstype="ext4",
        options="defaults,noatime",
        present={present},
    )
"""


@pytest.mark.destructive
def test_blank_disk_formatted_only_when_asked(pyinfra_run, lab_api, tmp_path):
    node, blank = _node_with(lab_api, "blank")
    # The lab's scratch disk: make it blank again (an earlier run of this test formatted it).
    lab_api.run(node, f"umount /srv/hc-fresh 2>/dev/null; wipefs -a -q {blank['by_id']}; rm -f /dev/disk/by-label/hc-fresh")

    def deploy_file(allow: bool, present: bool = True) -> str:
        path = tmp_path / f"blank_{allow}_{present}.py"
        path.write_text(textwrap.dedent(DEPLOY.format(node=node, allow=allow, by_id=blank["by_id"], present=present)))
        return str(path)

    def deploy(allow: bool, present: bool = True):
        return pyinfra_run(deploy_file(allow, present), "--limit", node)

    output = _refused(pyinfra_run, deploy_file(allow=False), "--limit", node)
    assert "is blank (no filesystem, no partition table)" in output, output[-3000:]
    assert lab_api.run(node, f"blkid -p {blank['by_id']}", check=False).returncode == 2, "formatted without being asked"

    formatted = deploy(allow=True)
    assert formatted["returncode"] == 0 and not results.errors(formatted), results.summary(formatted)
    probe = lab_api.run(node, f"blkid -p -o export {blank['by_id']}").stdout
    assert "TYPE=ext4" in probe and "LABEL=hc-fresh" in probe, probe
    assert "/srv/hc-fresh" in lab_api.run(node, "findmnt -n -o TARGET /srv/hc-fresh").stdout

    again = deploy(allow=True)
    assert again["returncode"] == 0 and results.changed(again) == {}, results.summary(again)

    removed = deploy(allow=True, present=False)
    assert removed["returncode"] == 0 and not results.errors(removed), results.summary(removed)
    assert lab_api.run(node, "findmnt /srv/hc-fresh", check=False).returncode != 0
    assert lab_api.run(node, "test -e '/etc/systemd/system/srv-hc\\x2dfresh.mount'", check=False).returncode != 0
    # Unmounted, not wiped: the filesystem is still there.
    assert "LABEL=hc-fresh" in lab_api.run(node, f"blkid -p -o export {blank['by_id']}").stdout
    # Leave the lab's scratch disk blank again for the tests that come after (Longhorn uses it).
    lab_api.run(node, f"wipefs -a -q {blank['by_id']}; rm -f /dev/disk/by-label/hc-fresh")
