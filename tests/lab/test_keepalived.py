"""
The keepalived virtual IP, proven on the lab (or checked on a real cluster with --inventory):

- after the deploy exactly one server of keepalived_group holds the VIP (the one with the
  highest priority), the VIP answers ping from the controller, every node's config passes
  `keepalived -t`, the config file (it holds the VRRP password) is 0600 root, and the password
  shows nowhere in the deploy's output;
- a config keepalived rejects (a health check that does not exist) never replaces the working
  one, and keepalived keeps serving the VIP;
- failover (destructive, lab only): stop keepalived on the holder, stop the health-checked
  service on the holder, crash the holder, cut its link; each time the VIP must move to another
  server within FAILOVER_LIMIT seconds (measured by a 10 Hz ping of the VIP from the controller
  and printed), and the VIP answers throughout except for that one gap. When the holder comes
  back it takes the VIP back (nopreempt off, the default); with keepalived_nopreempt=True it
  does not. Every destructive test puts the cluster back as it found it.

The VRRP state comes from the keepalived.VrrpStatus fact (the notify-written state file and
`ip -o addr show`), run through SSH exactly as pyinfra runs it.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest

from facts.keepalived import VrrpStatus
from lab import results

FAILOVER_LIMIT = 4.0  # seconds, with advert_int 1 (master down interval 3 x 1 s + skew)
KEEPALIVED_OP = "keepalived | keepalived: the virtual IP"  # operation names carry their layer
CONFIG = "/etc/keepalived/keepalived.conf"


# --- The servers and their VRRP state ---------------------------------------------------------


@pytest.fixture(scope="module")
def servers(deployed, inventory_hosts, testinfra_hosts):
    """[(inventory host, testinfra host)] of keepalived_group, in inventory order."""
    data = inventory_hosts[0]["data"]
    if not data.get("keepalived_enabled", True):
        pytest.skip("keepalived_enabled is False")
    group = data.get("keepalived_group", "k3s_servers")
    members = [h for h in inventory_hosts if group in h["groups"]]
    assert len(members) >= 2, f"{group} needs at least two hosts to test a virtual IP"
    return list(zip(members, testinfra_hosts(group)))


def status(inv_host: dict, host) -> dict:
    """The keepalived.VrrpStatus fact of one node, read the way pyinfra reads it."""
    fact = VrrpStatus()
    command = fact.command(inv_host["data"]["node_interface"], str(inv_host["data"]["vip"]))
    out = host.run(command.get_raw_value())
    assert out.rc == 0, out.stderr
    return fact.process(out.stdout.splitlines())


def holders(servers) -> list[str]:
    return [h["name"] for h, host in servers if status(h, host)["holds_vip"]]


def vip_of(servers) -> str:
    return str(servers[0][0]["data"]["vip"])


def expected_holder(servers) -> str:
    """Highest keepalived priority: keepalived_priority, else the first host of the group."""
    best = None
    for index, (h, _host) in enumerate(servers):
        priority = h["data"].get("keepalived_priority") or max(1, 150 - 10 * index)
        if best is None or priority > best[0]:
            best = (priority, h["name"])
    return best[1]


# --- Lab-side helpers (SSH through lab.api, bounded by short timeouts) ------------------------


def lab_holders(lab_api, names, vip, interface) -> list[str]:
    found = []
    for name in names:
        try:
            out = lab_api.run(name, f"ip -o -4 addr show dev {interface}", check=False, timeout=3)
        except subprocess.TimeoutExpired:
            continue
        if re.search(rf"\sinet {re.escape(vip)}/", out.stdout):
            found.append(name)
    return found


def wait_for(predicate, timeout: float, step: float = 0.05):
    """Poll predicate() until it returns a truthy value; (value, seconds) or (None, timeout)."""
    start = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None, time.monotonic() - start
        time.sleep(step)


class PingMonitor:
    """`ping -D -O -i 0.1` of the VIP from the controller; gaps between answers in seconds."""

    def __init__(self, vip: str):
        self.vip = vip
        self.replies: list[float] = []
        self.proc = None
        self.thread = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["ping", "-D", "-O", "-n", "-i", "0.1", "-W", "1", self.vip],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        ok, _ = wait_for(lambda: len(self.replies) >= 3, 10)
        assert ok, f"the VIP {self.vip} does not answer ping before the test"
        return self

    def _read(self):
        for line in self.proc.stdout:
            match = re.match(r"^\[(\d+\.\d+)\] \d+ bytes from", line)
            if match:
                self.replies.append(float(match.group(1)))

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(5)
        self.thread.join(5)

    def gaps(self, since: float) -> list[float]:
        """Silences longer than 0.5 s between answers after `since` (epoch seconds)."""
        times = [t for t in self.replies if t >= since - 1]
        return [round(b - a, 2) for a, b in zip(times, times[1:]) if b - a > 0.5]


def measure_failover(lab_api, servers, action, label: str, restore, back_to_holder: bool = True):
    """
    Run `action(holder)` while pinging the VIP; the VIP must move to another server within
    FAILOVER_LIMIT. Then `restore(holder)` and the VIP must be held by exactly one server again
    (the old holder when back_to_holder). Returns (seconds to move, ping gaps).
    """
    names = [h["name"] for h, _ in servers]
    vip = vip_of(servers)
    interface = servers[0][0]["data"]["node_interface"]
    current = lab_holders(lab_api, names, vip, interface)
    assert len(current) == 1, f"before {label}: VIP holders {current}"
    holder = current[0]
    others = [n for n in names if n != holder]

    with PingMonitor(vip) as ping:
        # On every other server a watcher loop (20 ms) prints the time the VIP appears there; the
        # nodes share the controller's clock (containers of one kernel; NTP-synced on real boards).
        appeared: dict[str, float] = {}

        def watch(name):
            script = (
                f"timeout 20 sh -c 'until ip -o -4 addr show dev {interface} | grep -q \" {vip}/\"; "
                "do sleep 0.02; done; date +%s.%N'"
            )
            out = lab_api.run(name, script, check=False, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                appeared[name] = float(out.stdout.strip())

        watchers = [threading.Thread(target=watch, args=(n,), daemon=True) for n in others]
        for w in watchers:
            w.start()
        time.sleep(1.5)  # the watchers are connected and looping
        t0 = time.time()
        action(holder)
        wait_for(lambda: appeared or not any(w.is_alive() for w in watchers), 25, 0.02)
        moved = sorted(appeared, key=appeared.get)[:1]
        seconds = (appeared[moved[0]] - t0) if moved else float("inf")
        # let ping see the new holder answer before measuring the gap
        wait_for(lambda: ping.replies and ping.replies[-1] > t0 + min(seconds, 20), 5)
        gaps = ping.gaps(t0)
        now = lab_holders(lab_api, others, vip, interface)
        print(f"\n{label}: VIP moved from {holder} to {moved} in {seconds:.2f} s; ping silences {gaps} s")
        try:
            assert moved and now == moved, f"{label}: the VIP is on {now} (first seen on {moved})"
            assert seconds <= FAILOVER_LIMIT, f"{label}: the VIP took {seconds:.2f} s to move (limit {FAILOVER_LIMIT} s)"
            assert len(gaps) <= 1 and all(g <= FAILOVER_LIMIT for g in gaps), (
                f"{label}: the VIP did not answer for {gaps} s")
        finally:
            t1 = time.time()
            restore(holder)
            want = [holder] if back_to_holder else None

            def settled():
                now = lab_holders(lab_api, names, vip, interface)
                return now if (len(now) == 1 and (want is None or now == want)) else None

            back, back_seconds = wait_for(settled, 60, step=0.2)
            print(f"{label}: after restoring {holder} the VIP is on {back} ({back_seconds:.2f} s); "
                  f"ping silences since {ping.gaps(t1)} s")
        assert back, f"{label}: after restoring {holder} the VIP did not settle on {want or 'one server'}"
        assert all(g <= FAILOVER_LIMIT for g in ping.gaps(t1)), f"{label}: silence during the way back"
    return seconds, gaps


# --- After the deploy -------------------------------------------------------------------------


def test_exactly_one_server_holds_the_vip(servers):
    states = {h["name"]: status(h, host) for h, host in servers}
    holding = [name for name, s in states.items() if s["holds_vip"]]
    assert len(holding) == 1, f"VIP holders: {holding} ({states})"
    assert states[holding[0]]["state"] == "MASTER", states
    assert all(s["state"] == "BACKUP" for name, s in states.items() if name not in holding), states
    if not servers[0][0]["data"].get("keepalived_nopreempt"):
        assert holding[0] == expected_holder(servers), f"{holding[0]} holds the VIP, not the highest priority"


def test_a_stale_state_notification_is_not_recorded(servers):
    """keepalived does not wait for its notify processes: a MASTER and a BACKUP notification a
    few milliseconds apart can finish in either order (a split brain in the state file, seen
    after forged adverts). The recorder ignores a notification the interface contradicts: on
    the holder a late BACKUP, on the others a late MASTER, also when both race."""
    from facts.keepalived import STATE_FILE
    from operations.keepalived import NOTIFY_HELPER

    states = {h["name"]: status(h, host) for h, host in servers}
    for h, host in servers:
        before = states[h["name"]]
        if before["holds_vip"]:
            stale = f"{NOTIFY_HELPER} BACKUP"
            race = f"{NOTIFY_HELPER} BACKUP & {NOTIFY_HELPER} MASTER; wait"
        else:
            stale = f"{NOTIFY_HELPER} MASTER"
            race = f"{NOTIFY_HELPER} MASTER & {NOTIFY_HELPER} BACKUP; wait"
        recorded = host.check_output(f"cat {STATE_FILE}")
        out = host.run(stale)
        assert out.rc == 0, out.stderr
        assert host.check_output(f"cat {STATE_FILE}") == recorded, f"{h['name']}: `{stale}` was recorded"
        out = host.run(race)
        assert out.rc == 0, out.stderr
        assert host.check_output(f"cat {STATE_FILE}").split()[0] == before["state"], f"{h['name']}: `{race}`"
    assert states == {h["name"]: {**status(h, host), "since": states[h["name"]]["since"]} for h, host in servers}


def test_vip_answers_from_the_controller(servers):
    vip = vip_of(servers)
    proc = subprocess.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", vip], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_passes_keepalived_test(servers):
    for h, host in servers:
        # (not the last command of the shell: keepalived killing itself must not end the session)
        out = host.run(f"keepalived -t -f {CONFIG}; rc=$?; exit $rc")
        if out.rc == 143:
            # keepalived 2.2.7 (Debian 12) kills its own config test when it checks a script run
            # by a non-root user (fixed upstream in 2.2.8, commit aae8e91): test a 0600 copy whose
            # scripts run as root, as operations/keepalived.py does.
            out = host.run(
                f"t=$(mktemp /run/keepalived-test.XXXXXX) && sed 's/^\\([[:space:]]*script_user\\)[[:space:]].*/\\1 root/' "
                f"{CONFIG} > \"$t\" && keepalived -t -f \"$t\"; rc=$?; rm -f \"$t\"; exit $rc"
            )
        assert out.rc == 0, f"{h['name']}: keepalived -t: {out.stderr}"


def test_config_with_the_password_is_root_only(servers):
    for h, host in servers:
        config = host.file(CONFIG)
        assert config.user == "root" and config.group == "root" and config.mode == 0o600, h["name"]
        assert h["data"]["keepalived_auth_pass"] in config.content_string
        # Every other file that holds the password (the rejected candidate .homecloud-new, the
        # timestamped backups of replaced configs) is root-only too; the distribution's
        # keepalived.conf.sample (no password) may stay as it is.
        extras = host.run(f"ls -1d {CONFIG}.* 2>/dev/null; true").stdout.split()
        for extra in extras:
            if h["data"]["keepalived_auth_pass"] in host.file(extra).content_string:
                assert host.file(extra).mode == 0o600, f"{h['name']}: {extra} holds the password and is not 0600"
        script_user = host.user("keepalived_script")
        assert script_user.exists and script_user.uid != 0
        assert "enable_script_security" in config.content_string and "script_user keepalived_script" in config.content_string


def test_password_not_in_deploy_output(servers, deployed):
    secret = servers[0][0]["data"]["keepalived_auth_pass"]
    if deployed.get("mode") == "inventory":
        pytest.skip("no deploy output with --inventory")
    import json

    assert secret not in (deployed.get("stderr") or "")
    assert secret not in json.dumps(deployed.get("results"))


def test_rejected_config_never_replaces_the_working_one(servers, pyinfra_run):
    """A health check that does not exist: keepalived -t refuses the candidate, nothing changes."""
    before = {h["name"]: host.file(CONFIG).sha256sum for h, host in servers}
    result = pyinfra_run("deploys/keepalived.py", "--data", "keepalived_check_script=/usr/bin/homecloud-no-such-check")
    try:
        failed = results.errors(result)
        assert result["returncode"] != 0, results.summary(result)
        for h, host in servers:
            assert KEEPALIVED_OP in failed.get(h["name"], []), results.summary(result)
            assert host.file(CONFIG).sha256sum == before[h["name"]], f"{h['name']}: the live config changed"
            assert host.service("keepalived").is_running
        assert f"homecloud: keepalived rejected the new {CONFIG}; {CONFIG} was not changed" in result["stderr"]
        assert len(holders(servers)) == 1
    finally:
        for _h, host in servers:  # the rejected candidates (0600) are kept for reading; tidy up
            host.run(f"rm -f {CONFIG}.homecloud-new")


# --- Failover (destructive: lab only) ---------------------------------------------------------


@pytest.mark.destructive
def test_failover_when_keepalived_stops(servers, lab_api):
    measure_failover(
        lab_api,
        servers,
        action=lambda holder: lab_api.run(holder, "systemctl stop keepalived"),
        label="keepalived stopped on the holder",
        restore=lambda holder: lab_api.run(holder, "systemctl start keepalived"),
    )


def checked_unit(data: dict) -> str | None:
    """The systemd unit behind keepalived_check_script (None when it is not a unit check)."""
    script = data.get("keepalived_check_script")
    if script is None:
        return "k3s" if data.get("k3s_install") != "off" else None
    match = re.search(r"systemctl\s+is-active\s+(?:--quiet\s+|-q\s+)?(\S+)", script)
    return match.group(1) if match else None


@pytest.mark.destructive
def test_failover_when_the_checked_service_stops(servers, lab_api):
    unit = checked_unit(servers[0][0]["data"])
    if unit is None:
        pytest.skip("the health check is not a systemd unit this test knows how to stop")
    # systemd itself starts the service again after 8 s, even if stopping it cut our SSH access
    # (the lab checks sshd).
    measure_failover(
        lab_api,
        servers,
        action=lambda holder: lab_api.run(
            holder,
            f"systemd-run --quiet --collect --on-active=8 /bin/systemctl start {unit} && systemctl stop {unit}",
        ),
        label=f"health-checked service {unit} stopped on the holder",
        restore=lambda holder: wait_for(
            lambda: lab_api.run(holder, f"systemctl is-active {unit}", check=False, timeout=5).returncode == 0, 30, 0.5
        ),
    )


@pytest.mark.destructive
def test_failover_when_the_holder_crashes(servers, lab_api):
    measure_failover(
        lab_api,
        servers,
        action=lambda holder: lab_api.crash(holder),
        label="holder crashed",
        restore=lambda holder: lab_api.start(holder),
    )


@pytest.mark.destructive
def test_failover_when_the_holder_loses_its_link(servers, lab_api):
    measure_failover(
        lab_api,
        servers,
        action=lambda holder: lab_api.cut_link(holder),
        label="holder's link cut",
        restore=lambda holder: lab_api.restore_link(holder),
    )


@pytest.mark.destructive
def test_nopreempt_keeps_the_vip_where_it_is(servers, lab_api, pyinfra_run):
    first = pyinfra_run("deploys/keepalived.py", "--data", "keepalived_nopreempt=True")
    try:
        assert first["returncode"] == 0 and not results.errors(first), results.summary(first)
        for h, host in servers:
            assert "nopreempt" in host.file(CONFIG).content_string
        # the old holder comes back but must not take the VIP back
        measure_failover(
            lab_api,
            servers,
            action=lambda holder: lab_api.run(holder, "systemctl stop keepalived"),
            label="nopreempt: keepalived stopped on the holder",
            restore=lambda holder: lab_api.run(holder, "systemctl start keepalived"),
            back_to_holder=False,
        )
        names = [h["name"] for h, _ in servers]
        vip, interface = vip_of(servers), servers[0][0]["data"]["node_interface"]
        time.sleep(5)  # several adverts: a preempting node would have taken it back by now
        now = lab_holders(lab_api, names, vip, interface)
        assert len(now) == 1 and now[0] != expected_holder(servers), f"with nopreempt the VIP went back to {now}"
    finally:
        restored = pyinfra_run("deploys/keepalived.py")
        assert restored["returncode"] == 0 and not results.errors(restored), results.summary(restored)
        names = [h["name"] for h, _ in servers]
        vip, interface = vip_of(servers), servers[0][0]["data"]["node_interface"]
        back, seconds = wait_for(
            lambda: lab_holders(lab_api, names, vip, interface) == [expected_holder(servers)], 30, 0.3
        )
        print(f"\nnopreempt off again: the VIP is back on {expected_holder(servers)} after {seconds:.2f} s")
        assert back, "after turning nopreempt off again the highest priority server did not take the VIP back"


@pytest.mark.destructive
def test_multicast_mode(servers, lab_api, pyinfra_run):
    """keepalived_unicast=False: VRRP adverts go to 224.0.0.18; one holder, failover, back."""
    first = pyinfra_run("deploys/keepalived.py", "--data", "keepalived_unicast=False")
    try:
        assert first["returncode"] == 0 and not results.errors(first), results.summary(first)
        for h, host in servers:
            assert "unicast_peer" not in host.file(CONFIG).content_string
        names = [h["name"] for h, _ in servers]
        vip, interface = vip_of(servers), servers[0][0]["data"]["node_interface"]
        one, _ = wait_for(lambda: len(lab_holders(lab_api, names, vip, interface)) == 1, 15, 0.3)
        assert one, f"multicast: VIP holders {lab_holders(lab_api, names, vip, interface)}"
        measure_failover(
            lab_api,
            servers,
            action=lambda holder: lab_api.run(holder, "systemctl stop keepalived"),
            label="multicast: keepalived stopped on the holder",
            restore=lambda holder: lab_api.run(holder, "systemctl start keepalived"),
        )
    finally:
        restored = pyinfra_run("deploys/keepalived.py")
        assert restored["returncode"] == 0 and not results.errors(restored), results.summary(restored)
        names = [h["name"] for h, _ in servers]
        vip, interface = vip_of(servers), servers[0][0]["data"]["node_interface"]
        back, _ = wait_for(lambda: lab_holders(lab_api, names, vip, interface) == [expected_holder(servers)], 30, 0.3)
        assert back, "after going back to unicast the highest priority server does not hold the VIP"
