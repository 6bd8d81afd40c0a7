"""
The node base (deploys/base.py), proven on the lab (or checked on a real cluster with --inventory):

- host name = inventory name, and /etc/hosts resolves every cluster node (managed block, the
  distribution's own lines kept);
- no active swap and no active swap line in fstab;
- systemd-timesyncd enabled (and running, except in a container, where its unit condition
  skips it and the host keeps the clock);
- kernel modules present and listed for the next boot; sysctls at their values and persisted;
- a sysctl key the host does not have, and a kernel module the kernel cannot provide, stop
  the deploy with a clear error naming host and key/module (and nothing is persisted);
- Raspberry Pi boot flags end to end on a fake /boot/firmware/cmdline.txt placed in a lab node:
  the flags are added once to the single line, a backup is kept, a second run changes nothing,
  and the reboot-needed signal is reported (rpi_reboot=False). The reboot itself is NOT run in
  the lab: rebooting an nspawn node ends its container, and the lab kernel's command line
  cannot carry the flags anyway, so it is only covered by the operation's fixtures.
"""

from __future__ import annotations

import json
import re

import pytest

from lab import results

BASE_DEPLOY = "deploys/base.py"


@pytest.fixture(scope="module")
def nodes(deployed, inventory_hosts, testinfra_hosts):
    return list(zip(inventory_hosts, testinfra_hosts("all")))


def is_ip(name: str) -> bool:
    return re.match(r"^\d+\.\d+\.\d+\.\d+$", name) is not None


def test_hostname_and_cluster_names(nodes):
    for h, host in nodes:
        if not h["data"].get("base_manage_hostname", True) or is_ip(h["name"]):
            continue
        assert host.check_output("hostname") == h["name"]
        assert host.file("/etc/hostname").content_string.strip() == h["name"]
        hosts_file = host.file("/etc/hosts").content_string
        assert "localhost" in hosts_file, "the distribution's lines must stay"
        assert hosts_file.count("# BEGIN homecloud nodes") == 1
        for other, _ in nodes:
            if is_ip(other["name"]) or other["name"] == h["name"]:
                continue  # the own name may resolve to 127.0.1.1 first (Debian convention)
            resolved = host.check_output(f"getent hosts {other['name']}").split()
            assert resolved[0] == other["data"]["node_ip"], f"{h['name']}: {other['name']} -> {resolved}"


def test_swap_is_off(nodes):
    for h, host in nodes:
        if not h["data"].get("base_disable_swap", True):
            continue
        assert host.check_output("tail -n +2 /proc/swaps") == "", f"{h['name']}: swap is on"
        assert host.check_output("awk '$1 !~ /^#/ && $3 == \"swap\"' /etc/fstab") == ""


def test_clock_sync(nodes):
    for h, host in nodes:
        if not h["data"].get("base_time_sync", True):
            continue
        others = [u for u in ("chrony", "ntp", "ntpsec", "openntpd") if host.run(f"systemctl is-active {u}").rc == 0]
        if others:
            continue  # another NTP daemon keeps the clock: homecloud leaves it in charge
        unit = host.service("systemd-timesyncd")
        assert unit.is_enabled, h["name"]
        container = host.run("systemd-detect-virt --container").stdout.strip()
        if container and container != "none":
            # ConditionVirtualization=!container: systemd skips the unit in a container
            assert host.check_output("systemctl show -p ConditionResult --value systemd-timesyncd") == "no"
        else:
            assert unit.is_running, h["name"]


def test_kernel_modules_present_and_persisted(nodes):
    for h, host in nodes:
        modules = list(h["data"].get("base_kernel_modules") or [])
        if not modules:
            continue
        listed = host.file("/etc/modules-load.d/homecloud.conf").content_string.split()
        for module in modules:
            assert module in listed
            present = host.run(
                f"test -d /sys/module/{module} || grep -qsw {module} /proc/filesystems || "
                f"{{ [ {module} = br_netfilter ] && test -d /proc/sys/net/bridge; }}"
            )
            assert present.rc == 0, f"{h['name']}: module {module} is not there"


def test_sysctls_applied_and_persisted(nodes):
    for h, host in nodes:
        sysctls = dict(h["data"].get("base_sysctls") or {})
        if not sysctls:
            continue
        persisted = host.file("/etc/sysctl.d/90-homecloud.conf").content_string
        for key, value in sysctls.items():
            assert " ".join(host.check_output(f"sysctl -n {key}").split()) == str(value), f"{h['name']}: {key}"
            assert f"{key} = {value}" in persisted


def _one_node(nodes):
    """A node outside keepalived_group if there is one (the VIP is not disturbed)."""
    group = nodes[0][0]["data"].get("keepalived_group", "k3s_servers")
    outside = [pair for pair in nodes if group not in pair[0]["groups"]]
    return (outside or nodes)[-1]


def failing_run(pyinfra_run, *args) -> str:
    """Run a deploy that must fail; its log. (pyinfra prints no JSON when every host failed.)"""
    try:
        result = pyinfra_run(*args)
    except results.PyinfraRunError as e:
        return str(e)
    assert result["returncode"] != 0, results.summary(result)
    return results.summary(result)


def test_missing_sysctl_key_fails_clearly(nodes, pyinfra_run):
    h, host = _one_node(nodes)
    before = host.file("/etc/sysctl.d/90-homecloud.conf").sha256sum
    bad = {"net.ipv4.ip_forward": "1", "net.homecloud.no_such_key": "1"}
    log = failing_run(pyinfra_run, BASE_DEPLOY, "--limit", h["name"], "--data", f"base_sysctls={json.dumps(bad)}")
    assert f"[{h['name']}] homecloud: sysctl net.homecloud.no_such_key does not exist on this host" in log, log
    assert host.file("/etc/sysctl.d/90-homecloud.conf").sha256sum == before, "a failed key must not be persisted"


def test_missing_kernel_module_fails_clearly(nodes, pyinfra_run):
    h, host = _one_node(nodes)
    # a module no kernel provides, so this also holds on a real board
    log = failing_run(
        pyinfra_run, BASE_DEPLOY, "--limit", h["name"], "--data", 'base_kernel_modules=["overlay", "homecloud_no_such_module"]'
    )
    message = f"{h['name']}: kernel module(s) homecloud_no_such_module are neither loaded, built in nor loadable"
    assert message in log, log
    assert "homecloud_no_such_module" not in host.file("/etc/modules-load.d/homecloud.conf").content_string


BOOKWORM_CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes "
    "rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot splash plymouth.ignore-serial-consoles "
    "cfg80211.ieee80211_regdom=GB"
)


@pytest.mark.destructive
def test_raspberry_pi_cmdline_end_to_end(nodes, pyinfra_run, lab_api):
    h, host = _one_node(nodes)
    name = h["name"]
    assert not host.file("/boot/firmware").exists, "this lab node already has a /boot/firmware"
    lab_api.run(name, f"mkdir -p /boot/firmware && printf '%s\\n' '{BOOKWORM_CMDLINE}' > /boot/firmware/cmdline.txt")
    try:
        first = pyinfra_run(BASE_DEPLOY, "--limit", name, "--data", "rpi_reboot=False")
        assert first["returncode"] == 0, results.summary(first)
        changed = results.changed(first).get(name, [])
        assert "base | Raspberry Pi: cgroup flags on the kernel command line" in changed, results.summary(first)
        assert not any("reboot" in op for op in changed), "rpi_reboot=False must not reboot"
        assert f"{name}: reboot needed: cgroup_memory=1 cgroup_enable=memory" in first["stderr"]

        lines = host.file("/boot/firmware/cmdline.txt").content_string.splitlines()
        assert len(lines) == 1, lines
        tokens = lines[0].split()
        assert tokens[: len(BOOKWORM_CMDLINE.split())] == BOOKWORM_CMDLINE.split(), "existing flags must stay in order"
        for flag in ("cgroup_memory=1", "cgroup_enable=memory"):
            assert tokens.count(flag) == 1, tokens
        # The lab host has cpuset enabled (/proc/cgroups), so cpuset is not added here.
        assert "cgroup_enable=cpuset" not in tokens
        backup = host.file("/boot/firmware/cmdline.txt.homecloud.bak").content_string
        assert backup.strip() == BOOKWORM_CMDLINE

        second = pyinfra_run(BASE_DEPLOY, "--limit", name, "--data", "rpi_reboot=False")
        assert second["returncode"] == 0 and results.changed(second) == {}, results.summary(second)
        # the signal stays until the node really boots with the flags (decided from facts)
        assert f"{name}: reboot needed:" in second["stderr"]
    finally:
        lab_api.run(name, "rm -rf /boot/firmware")


def _newest_backup(host, path: str):
    """The newest backup system.backup_command made of `path` (<path>.<yymmddHHMM>)."""
    newest = host.check_output(f"ls -1d {path}.[0-9]* | grep -E '\\.[0-9]{{10}}$' | sort | tail -n 1")
    assert newest, f"no backup of {path}"
    return host.file(newest)


@pytest.mark.destructive
def test_base_repairs_drift_and_keeps_the_users_lines(nodes, pyinfra_run, lab_api):
    """
    A node drifted by hand: another host name, a wrong address in the homecloud block, a swap
    line in fstab, forwarding off. One run puts it right (backups kept, the user's own lines
    kept), the next run changes nothing.
    """
    h, host = _one_node(nodes)
    name = h["name"]
    if is_ip(name) or not h["data"].get("base_manage_hostname", True):
        pytest.skip("host names are not managed")
    lab_api.run(
        name,
        "hostname drifted && echo drifted > /etc/hostname && "
        "sed -i 's/^127.0.1.1.*/127.0.1.1\\tdrifted/' /etc/hosts && "
        f"sed -i 's/^[0-9.]*\\t{name}$/192.0.2.99\\t{name}/' /etc/hosts && "
        "echo '192.0.2.7 printer  # the user line' >> /etc/hosts && "
        "echo '/swapfile none swap sw 0 0' >> /etc/fstab && "
        "sysctl -qw net.ipv4.ip_forward=0",
    )
    try:
        first = pyinfra_run(BASE_DEPLOY, "--limit", name)
        assert first["returncode"] == 0, results.summary(first)
        changed = results.changed(first).get(name, [])
        # Operation names carry the layer (the @deploy) they belong to.
        for op in ("base | Host name and cluster nodes in /etc/hosts", "base | Swap off now and at boot", "base | sysctls for k3s"):
            assert op in changed, results.summary(first)

        assert host.check_output("hostname") == name
        assert host.file("/etc/hostname").content_string.strip() == name
        hosts_file = host.file("/etc/hosts").content_string
        assert f"127.0.1.1\t{name}" in hosts_file and "drifted" not in hosts_file
        assert f"{h['data']['node_ip']}\t{name}" in hosts_file and "192.0.2.99" not in hosts_file
        assert "192.0.2.7 printer  # the user line" in hosts_file, "the user's line must stay"
        hosts_backup = _newest_backup(host, "/etc/hosts")
        assert "192.0.2.99" in hosts_backup.content_string and hosts_backup.mode == 0o600

        fstab = host.file("/etc/fstab").content_string
        assert "#homecloud-swap-off# /swapfile none swap sw 0 0" in fstab.splitlines()
        fstab_backup = _newest_backup(host, "/etc/fstab")
        assert "/swapfile none swap sw 0 0" in fstab_backup.content_string.splitlines() and fstab_backup.mode == 0o600
        assert host.check_output("sysctl -n net.ipv4.ip_forward") == "1"

        second = pyinfra_run(BASE_DEPLOY, "--limit", name)
        assert second["returncode"] == 0 and results.changed(second) == {}, results.summary(second)
    finally:
        lab_api.run(
            name,
            "sed -i '/\\/swapfile none swap sw 0 0/d' /etc/fstab && sed -i '/192.0.2.7 printer/d' /etc/hosts",
            check=False,
        )
