"""
The hardening layer, proven on the local lab (deploys/all.py with the layer on, its defaults):

- sshd: a client offering only a removed key exchange (NIST ecdh) or MAC (hmac-sha1) is refused,
  password login is refused even with the right password (the server offers publickey only),
  the deploying key still logs in; a config `sshd -t` rejects is never activated (the deploy
  stops, the live drop-in stays, the node stays reachable);
- firewall: a port nothing allows (a python http.server on every node) is filtered from the
  controller on every node, reachable on the first once its firewall is switched off with
  --data, filtered again after the normal deploy; new rules that would refuse the controller's own
  address are refused before any change; VRRP adverts from a lab address that is not a
  keepalived peer (sent from a helper network namespace on the lab bridge, with the real
  password and priority 254) are ignored: the VIP stays on its holder, and every other member
  is BACKUP afterwards; SMB from a client outside its allowed network (TEST-NET-1 192.0.2.1, in
  a namespace of its own on the lab bridge) is dropped, and answers with the firewall stopped;
- unattended-upgrades: its dry run allows the Debian security origin only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import tempfile
import time

import pytest

from facts.keepalived import VrrpStatus
from lab import results
from operations.hardening import SSHD_DROPIN

HELPER_PORT = 9999
HELPER_NS = "hcvrrp"  # helper namespace and veth names stay <= 15 characters


@pytest.fixture(scope="module")
def lab(deployed, lab_api, inventory_hosts):
    data = inventory_hosts[0]["data"]
    if not data.get("hardening_enabled", True):
        pytest.skip("hardening_enabled is False")
    return lab_api


def ssh_argv(lab_api, node: str, *options: str) -> list[str]:
    ip = lab_api.node(node)["ip"]
    return [
        "ssh", "-i", lab_api.ssh_key(), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", *options, f"root@{ip}", "true",
    ]


def ssh_ok(lab_api, node: str) -> bool:
    return subprocess.run(ssh_argv(lab_api, node), capture_output=True, timeout=30).returncode == 0


def first_node(lab_api) -> str:
    return lab_api.nodes()[0]["name"]


# --- sshd -------------------------------------------------------------------------------------


def test_deploying_key_still_logs_in(lab):
    for n in lab.nodes():
        assert ssh_ok(lab, n["name"]), f"{n['name']}: the deploying key no longer logs in"


@pytest.mark.parametrize(
    "options, refusal",
    [
        (("-o", "KexAlgorithms=ecdh-sha2-nistp256"), "no matching key exchange method"),
        # With an AEAD cipher no MAC is negotiated: offer a cipher that needs one.
        (("-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha1"), "no matching MAC"),
        (("-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256"), "no matching host key type"),
    ],
)
def test_removed_algorithms_are_refused(lab, options, refusal):
    node = first_node(lab)
    out = subprocess.run(ssh_argv(lab, node, *options), capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and refusal in out.stderr, out.stderr


def test_password_login_is_refused(lab):
    node = first_node(lab)
    password = "Hc-" + os.urandom(9).hex()
    lab.run(node, "id hcpwtest >/dev/null 2>&1 || useradd -m -s /bin/sh hcpwtest")
    lab.run(node, "chpasswd", input=f"hcpwtest:{password}\n")  # on stdin: not in any argv
    with tempfile.TemporaryDirectory() as tmp:
        askpass = os.path.join(tmp, "askpass")
        with open(os.path.join(tmp, "pw"), "w") as f:
            f.write(password)
        with open(askpass, "w") as f:
            f.write(f"#!/bin/sh\ncat {os.path.join(tmp, 'pw')}\n")
        os.chmod(askpass, stat.S_IRWXU)
        env = dict(os.environ, SSH_ASKPASS=askpass, SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        ip = lab.node(node)["ip"]
        argv = [
            "ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
            "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no",
            "-o", "NumberOfPasswordPrompts=1", f"hcpwtest@{ip}", "true",
        ]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
        finally:
            lab.run(node, "userdel -r hcpwtest >/dev/null 2>&1 || true")
    assert out.returncode != 0, "password login succeeded"
    # The server offers keys only: the password is never even asked for.
    assert "Permission denied (publickey)" in out.stderr, out.stderr


def test_bad_sshd_config_is_never_activated(lab, pyinfra_run):
    node = first_node(lab)
    bad = "/etc/ssh/sshd_config.d/zz-hctest-bad.conf"
    # A hand edit of the drop-in (so the deploy rewrites it) and a file sshd -t refuses: the
    # candidate is tested with the whole config, so the deploy must stop before the reload
    # (a reload with this config would take sshd down).
    lab.run(node, f"echo '# hand edit' >> {SSHD_DROPIN} && echo 'NotAnSshdKeyword yes' > {bad}")
    try:
        live = lab.run(node, f"sha1sum < {SSHD_DROPIN}").stdout
        try:
            result = pyinfra_run("deploys/hardening.py", "--limit", node)
            assert results.errors(result).get(node), "the deploy accepted a config sshd -t rejects"
            report = json.dumps(result)
        except results.PyinfraRunError as e:  # the only host failed: pyinfra writes no JSON
            report = str(e)
        assert "sshd -t rejected the new" in report, report
        assert lab.run(node, f"sha1sum < {SSHD_DROPIN}").stdout == live, "the live drop-in was replaced"
        assert ssh_ok(lab, node), "the node is no longer reachable over SSH"
        assert lab.run(node, "systemctl is-active ssh.service").stdout.strip() == "active"
    finally:
        lab.run(node, f"rm -f {bad} {SSHD_DROPIN}.homecloud-new")
        pyinfra_run("deploys/hardening.py", "--limit", node)
    assert ssh_ok(lab, node)
    assert "# hand edit" not in lab.run(node, f"cat {SSHD_DROPIN}").stdout


# --- firewall ---------------------------------------------------------------------------------


def port_open(ip: str, port: int, timeout: float = 3) -> bool | None:
    """True: connected; False: refused (RST); None: no answer (filtered)."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return None


def test_port_not_allowed_is_filtered_until_the_firewall_is_off(lab, pyinfra_run, inventory_hosts):
    """A listener on a port nothing allows: filtered on every node with the firewall on (the
    arm64 node has it off: qemu-user cannot load nft rules); reachable on the first one once
    its firewall is switched off, filtered again when it is back on."""
    nodes = [h["name"] for h in inventory_hosts if h["data"].get("hardening_firewall", True)]
    start = (f"systemctl stop hctest-http 2>/dev/null; systemd-run --unit hctest-http python3 -m http.server {HELPER_PORT}; "
             f"for i in $(seq 50); do ss -ltn | grep -q ':{HELPER_PORT} ' && exit 0; sleep 0.1; done; exit 1")
    try:
        for node in nodes:
            lab.run(node, start)
            assert lab.run(node, f"python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{HELPER_PORT}/')\"", check=False).returncode == 0
            ip = lab.node(node)["ip"]
            assert port_open(ip, HELPER_PORT) is None, f"{node}: port {HELPER_PORT} is not filtered with the firewall on"
            assert port_open(ip, 22) is True, f"{node}: SSH is not reachable from the LAN"
        node, ip = nodes[0], lab.node(nodes[0])["ip"]
        try:
            result = pyinfra_run("deploys/hardening.py", "--limit", node, "--data", "hardening_firewall=False")
            assert result["returncode"] == 0 and not results.errors(result), result
            assert lab.run(node, "nft list table inet homecloud", check=False).returncode != 0, "the table is still there"
            assert port_open(ip, HELPER_PORT) is True, f"{node}: port {HELPER_PORT} is not reachable with the firewall off"
        finally:
            pyinfra_run("deploys/hardening.py", "--limit", node)
        assert port_open(ip, HELPER_PORT) is None, f"{node}: port {HELPER_PORT} is not filtered after switching the firewall back on"
    finally:
        for node in nodes:
            lab.run(node, "systemctl stop hctest-http", check=False)


def test_rules_that_would_shut_out_the_deploy_are_refused(lab, pyinfra_run):
    """SSH narrowed to a network the controller is not in (TEST-NET-1): the deploy stops with
    the controller's address in the message, the live rules stay, the node stays reachable."""
    node = first_node(lab)
    live = lab.run(node, "sha1sum < /etc/homecloud/firewall.nft").stdout
    controller = lab._default.state()["controller_ip"]
    try:
        result = pyinfra_run("deploys/hardening.py", "--limit", node, "--data", 'hardening_ssh_networks=["192.0.2.0/24"]')
        assert results.errors(result).get(node), "the deploy loaded rules that shut its own controller out"
        report = json.dumps(result)
    except results.PyinfraRunError as e:  # the only host failed: pyinfra writes no JSON
        report = str(e)
    assert f"this deploy connects from {controller} and could not log in again" in report, report
    assert lab.run(node, "sha1sum < /etc/homecloud/firewall.nft").stdout == live, "the live rules were replaced"
    assert ssh_ok(lab, node), "the node is no longer reachable over SSH"


def vrrp_advert(router_id: int, priority: int, vip: str, password: str) -> bytes:
    """A VRRPv2 advertisement (RFC 3768) with simple-text authentication."""
    body = bytes([0x21, router_id, priority, 1, 1, 1]) + b"\0\0" + socket.inet_aton(vip)
    body += password.encode()[:8].ljust(8, b"\0")
    total = sum(int.from_bytes(body[i:i + 2], "big") for i in range(0, len(body), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    checksum = (~total) & 0xFFFF
    return body[:6] + checksum.to_bytes(2, "big") + body[8:]


SENDER = r"""
import socket, sys, time
packet = bytes.fromhex(sys.argv[1]); targets = sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
end = time.time() + 6
while time.time() < end:
    for t in targets:
        s.sendto(packet, (t, 0))
    time.sleep(0.1)
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@contextlib.contextmanager
def namespace_on_bridge(lab, ns: str, address: str, routes: list[str]):
    """A network namespace `ns` plugged into the lab bridge with `address` (CIDR) and `routes`
    through its eth0; removed afterwards."""
    state = lab._default.state()
    veth = ns + "0"
    sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", veth, check=False)
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", state["bridge"], "up")
        sh("ip", "-n", ns, "addr", "add", address, "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for route in routes:
            sh("ip", "-n", ns, "route", "add", route, "dev", "eth0")
        yield state
    finally:
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", veth, check=False)


@pytest.fixture
def helper_namespace(lab):
    """A network namespace on the lab bridge with an address of the lab subnet that is no
    node, no VIP and not the controller: an intruder on the LAN. Removed afterwards."""
    import ipaddress

    state = lab._default.state()
    net = ipaddress.ip_network(state["subnet"])
    used = {n["ip"] for n in lab.nodes()} | {state["vip"], state["controller_ip"]}
    address = next(str(a) for a in reversed(list(net.hosts())) if str(a) not in used)
    with namespace_on_bridge(lab, HELPER_NS, f"{address}/{state['prefix']}", ["224.0.0.0/4"]):
        yield address


def vrrp_states(lab, inventory_hosts) -> dict:
    data = inventory_hosts[0]["data"]
    fact = VrrpStatus()
    command = fact.command(data["node_interface"], str(data["vip"])).get_raw_value()
    group = data.get("keepalived_group", "k3s_servers")
    return {
        h["name"]: fact.process(lab.run(h["name"], command).stdout.splitlines())
        for h in inventory_hosts
        if group in h["groups"]
    }


def send_forged_adverts(lab, inventory_hosts, holder: str, packet: bytes, targets: list[str]) -> None:
    """Send the forged adverts for 6 s from the helper namespace; the VIP must stay on `holder`
    (MASTER) all along."""
    sender = subprocess.Popen(["ip", "netns", "exec", HELPER_NS, "python3", "-c", SENDER, packet.hex(), *targets])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            now = vrrp_states(lab, inventory_hosts)
            assert [n for n, s in now.items() if s["holds_vip"]] == [holder], f"the VIP moved: {now}"
            assert now[holder]["state"] == "MASTER", now
            time.sleep(0.5)
    finally:
        sender.wait(timeout=30)
    assert sender.returncode == 0, "the advert sender failed"


def not_a_peer_lines(lab, node: str, since: int, intruder: str) -> int:
    out = lab.run(node, f"journalctl -q --no-pager -o cat --since @{since} | grep -c 'unicast source address {intruder} not a unicast peer' || true")
    return int(out.stdout.strip() or 0)


def test_vrrp_adverts_from_a_non_peer_are_ignored(lab, inventory_hosts, helper_namespace):
    data = inventory_hosts[0]["data"]
    if not data.get("keepalived_enabled", True):
        pytest.skip("keepalived_enabled is False")
    before = vrrp_states(lab, inventory_hosts)
    holders = [name for name, s in before.items() if s["holds_vip"]]
    assert len(holders) == 1, before
    holder = holders[0]
    targets = [lab.node(name)["ip"] for name in before] + ["224.0.0.18"]
    # An intruder who sniffed one advert knows the password: it sends it, with priority 254.
    packet = vrrp_advert(int(data.get("keepalived_router_id", 51)), 254, str(data["vip"]), str(data["keepalived_auth_pass"]))
    # The helper is on the LAN (ping answers): only VRRP is filtered.
    assert sh("ip", "netns", "exec", HELPER_NS, "ping", "-c", "1", "-W", "2", targets[0], check=False).returncode == 0

    # 1. Firewall on: the adverts never reach keepalived.
    since = int(time.time()) - 1
    send_forged_adverts(lab, inventory_hosts, holder, packet, targets)
    assert not_a_peer_lines(lab, holder, since, helper_namespace) == 0, "the firewall let VRRP from a non-peer through"

    # 2. Firewall stopped on the keepalived nodes: the adverts arrive and keepalived itself
    # drops them (check_unicast_src), so the VIP still stays. This also proves the packets
    # are well-formed adverts that reach the nodes.
    members = list(before)
    try:
        for name in members:
            lab.run(name, "systemctl stop homecloud-firewall.service")
        since = int(time.time()) - 1
        send_forged_adverts(lab, inventory_hosts, holder, packet, targets)
        assert not_a_peer_lines(lab, holder, since, helper_namespace) > 0, "keepalived did not see (and drop) the forged adverts"
    finally:
        for name in members:
            lab.run(name, "systemctl start homecloud-firewall.service")
    after = vrrp_states(lab, inventory_hosts)
    assert after[holder]["since"] == before[holder]["since"], "the holder changed state during the test"
    # With the firewall off, the flood delays the holder's adverts now and then: a backup may
    # take the VIP for a few milliseconds (MASTER, then BACKUP on the holder's next advert).
    # Afterwards every other member must be back to BACKUP, in its state file too.
    deadline = time.monotonic() + 10
    while True:
        after = vrrp_states(lab, inventory_hosts)
        others = {n: s for n, s in after.items() if n != holder}
        if all(s["state"] == "BACKUP" and not s["holds_vip"] for s in others.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert after[holder]["state"] == "MASTER" and after[holder]["holds_vip"], after
    assert all(s["state"] == "BACKUP" and not s["holds_vip"] for s in others.values()), after


# --- unattended-upgrades ----------------------------------------------------------------------


def test_unattended_upgrades_allows_the_security_origin_only(lab):
    node = first_node(lab)
    out = lab.run(node, "unattended-upgrade --dry-run -d 2>&1", check=False, timeout=600)
    lines = [l for l in out.stdout.splitlines() if "Allowed origins are:" in l]
    assert lines, out.stdout[-3000:]
    allowed = lines[0].split("Allowed origins are:", 1)[1]
    assert "Debian-Security" in allowed and "-security" in allowed, allowed
    assert allowed.count("origin=") == 1, f"more than the security origin: {allowed}"


OUTSIDE = "192.0.2.1"  # TEST-NET-1: outside every network of the lab; only on the lab's own bridge
OUTSIDE_NS = "hcout"
_CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(); s.settimeout(3)\n"
    "try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
    "except ConnectionRefusedError:\n    print('refused')\n"
    "except OSError:\n    print('filtered')\n"
)


def test_smb_from_outside_its_allowed_network_is_dropped(lab, inventory_hosts):
    """A client outside the LAN (SMB's default network) on the lab bridge, in a namespace of its
    own with a route back from the node: 445 is dropped with the firewall on and answers with it
    stopped (so the path works and the drop is the firewall's)."""
    dnas = [h for h in inventory_hosts if "dnas" in h["groups"]]
    if not dnas or not dnas[0]["data"].get("hardening_firewall", True) or not dnas[0]["data"].get("samba_enabled", True):
        pytest.skip("needs a dnas node with Samba and the firewall on")
    node = dnas[0]["name"]
    ip, interface = lab.node(node)["ip"], dnas[0]["data"]["node_interface"]

    def probe() -> str:
        return sh("ip", "netns", "exec", OUTSIDE_NS, "python3", "-c", _CONNECT, ip, "445").stdout.strip()

    with namespace_on_bridge(lab, OUTSIDE_NS, f"{OUTSIDE}/32", [f"{ip}/32"]):
        lab.run(node, f"ip route replace {OUTSIDE}/32 dev {interface}")
        try:
            assert port_open(ip, 445) is True, f"{node}: SMB is not reachable from the LAN"
            assert probe() == "filtered", f"{node}: SMB answers {OUTSIDE}, outside its networks"
            lab.run(node, "systemctl stop homecloud-firewall.service")
            try:
                assert probe() == "open", f"{node}: {OUTSIDE} cannot reach SMB even without the firewall (the test's path is broken)"
            finally:
                lab.run(node, "systemctl start homecloud-firewall.service")
            assert probe() == "filtered", f"{node}: SMB answers {OUTSIDE} after the firewall started again"
        finally:
            lab.run(node, f"ip route del {OUTSIDE}/32 dev {interface}", check=False)
