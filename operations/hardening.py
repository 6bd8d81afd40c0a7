"""
hardening: sshd's settings, a host firewall of its own (nftables) and kernel sysctls.

- ``sshd``: a drop-in in /etc/ssh/sshd_config.d (Debian 12's sshd_config includes those files
  first, and the first value of a keyword wins), tested as part of the whole sshd config with
  ``sshd -t`` before it replaces the live one; sshd is reloaded (the live sessions survive)
  only when it changed. Before password authentication goes off, the session the deploy runs
  in must be one that logged in with a key (facts.hardening.SshLogin), else the operation stops.
- ``firewall``: /etc/homecloud/firewall.nft replaces only the table ``inet homecloud`` (never
  ``flush ruleset``: k3s, flannel and kube-proxy keep their own rules), checked with
  ``nft -c -f`` first, loaded by the oneshot unit homecloud-firewall.service at boot.
- ``sysctls``: hardening sysctls set now where this host lets them be written, persisted in
  /etc/sysctl.d for the next boot.
"""

from __future__ import annotations

import ipaddress
import re

from pyinfra import host
from pyinfra.api import OperationError, QuoteString, StringCommand, operation

from facts.hardening import SshLogin, Sysctls
from facts.system import FileStates
from operations.system import content_differs, move_aside, put_texts, unit_states, write_file

SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-homecloud.conf"
SSHD_CONFIG = "/etc/ssh/sshd_config"
# The candidate is tested as the first Include of a copy of the whole sshd_config (so the rest
# of the config, and the other drop-ins, are tested with it): `sshd -t -f <candidate>` alone
# would test a config without the distribution's settings.
SSHD_CHECK = (
    "t=$(mktemp /etc/ssh/homecloud-test.XXXXXX) && { echo \"Include {}\"; cat "
    + SSHD_CONFIG
    + "; } > \"$t\" && sshd -t -f \"$t\"; rc=$?; rm -f \"$t\"; exit $rc"
)

# OpenSSH 9.2 (Debian 12): no NIST curves, no SHA-1, no CBC, encrypt-then-MAC only.
KEX = [
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
]
CIPHERS = ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr"]
MACS = ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com"]
HOST_KEY_ALGORITHMS = [
    "ssh-ed25519",
    "ssh-ed25519-cert-v01@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256",
    "rsa-sha2-256-cert-v01@openssh.com",
]
HOST_KEYS = ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key"]
PERMIT_ROOT = ("no", "prohibit-password")
MAX_STARTUPS_RE = re.compile(r"\d+(:\d+:\d+)?")

FIREWALL_RULES = "/etc/homecloud/firewall.nft"
FIREWALL_UNIT = "homecloud-firewall.service"
FIREWALL_UNIT_PATH = f"/etc/systemd/system/{FIREWALL_UNIT}"
TABLE = "inet homecloud"
FIREWALL_UNIT_TEXT = f"""# Managed by homecloud (deploys/hardening.py).
# Loads the homecloud firewall: it replaces only the nftables table `{TABLE}`
# (never the rules of k3s, flannel or anyone else). Stopping it removes that table.
[Unit]
Description=homecloud host firewall (nftables table {TABLE})
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target
DefaultDependencies=no

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f {FIREWALL_RULES}
ExecReload=/usr/sbin/nft -f {FIREWALL_RULES}
ExecStop=/bin/sh -c 'nft list table {TABLE} >/dev/null 2>&1 && nft delete table {TABLE} || true'

[Install]
WantedBy=sysinit.target
"""
K3S_TCP = ["6443", "2379-2380", "10250"]
K3S_UDP = ["8472", "51820-51821"]
K3S_POD_NETWORKS = ["10.42.0.0/16", "10.43.0.0/16"]
FIREWALL_SOURCES = {
    "vrrp_peers", "k3s_nodes", "api_networks", "ingress", "syncthing_peers", "syncthing_networks", "smb_networks",
    "nfs_networks", "nfs_ports", "extra_rules",
}
RULE_RE = re.compile(r"[^\n\r;{}#]+")


# --- sshd -----------------------------------------------------------------------------------


SSHD_DEFAULTS = {
    "permit_root_login": "prohibit-password",
    "password_authentication": False,
    "x11_forwarding": False,
    "agent_forwarding": False,
    "tcp_forwarding": False,
    "max_auth_tries": 3,
    "login_grace_time": 30,
    "max_startups": "10:30:60",
}


def render_sshd(**options) -> str:
    """The text of the sshd drop-in; `options`: those of the ``sshd`` operation (validated)."""
    unknown = set(options) - set(SSHD_DEFAULTS)
    if unknown:
        raise OperationError(f"unknown sshd options: {', '.join(sorted(unknown))}")
    o = {**SSHD_DEFAULTS, **options}
    permit_root_login, password_authentication = o["permit_root_login"], o["password_authentication"]
    x11_forwarding, agent_forwarding, tcp_forwarding = o["x11_forwarding"], o["agent_forwarding"], o["tcp_forwarding"]
    max_auth_tries, login_grace_time, max_startups = o["max_auth_tries"], o["login_grace_time"], o["max_startups"]
    if permit_root_login not in PERMIT_ROOT:
        raise OperationError(f"permit_root_login `{permit_root_login}` must be one of {', '.join(PERMIT_ROOT)}")
    if not 1 <= int(max_auth_tries) <= 10:
        raise OperationError(f"max_auth_tries {max_auth_tries} must be 1-10")
    if not 5 <= int(login_grace_time) <= 600:
        raise OperationError(f"login_grace_time {login_grace_time} must be 5-600 seconds")
    if not MAX_STARTUPS_RE.fullmatch(str(max_startups)):
        raise OperationError(f"max_startups `{max_startups}` is not N or start:rate:full")

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    lines = [
        "# Managed by homecloud (deploys/hardening.py): changes here are replaced on the next run.",
        "# Included first by /etc/ssh/sshd_config: the first value of a keyword wins.",
        f"PasswordAuthentication {yes(password_authentication)}",
        f"KbdInteractiveAuthentication {yes(password_authentication)}",
        "PermitEmptyPasswords no",
        "PubkeyAuthentication yes",
        f"PermitRootLogin {permit_root_login}",
        *[f"HostKey {key}" for key in HOST_KEYS],
        f"KexAlgorithms {','.join(KEX)}",
        f"Ciphers {','.join(CIPHERS)}",
        f"MACs {','.join(MACS)}",
        f"HostKeyAlgorithms {','.join(HOST_KEY_ALGORITHMS)}",
        f"PubkeyAcceptedAlgorithms {','.join(HOST_KEY_ALGORITHMS)}",
        "RequiredRSASize 3072",
        f"X11Forwarding {yes(x11_forwarding)}",
        f"AllowAgentForwarding {yes(agent_forwarding)}",
        f"AllowTcpForwarding {yes(tcp_forwarding)}",
        "PermitTunnel no",
        f"MaxAuthTries {int(max_auth_tries)}",
        f"LoginGraceTime {int(login_grace_time)}",
        f"MaxStartups {max_startups}",
        "",
    ]
    return "\n".join(lines)


@operation()
def sshd(
    permit_root_login: str = "prohibit-password",
    password_authentication: bool = False,
    x11_forwarding: bool = False,
    agent_forwarding: bool = False,
    tcp_forwarding: bool = False,
    max_auth_tries: int = 3,
    login_grace_time: int = 30,
    max_startups: str = "10:30:60",
    present: bool = True,
    path: str = SSHD_DROPIN,
    reload: bool = True,
):
    """
    Harden sshd with a drop-in that Debian 12's sshd_config includes first.

    + permit_root_login: ``prohibit-password`` (root by key only) or ``no``
    + password_authentication: True keeps password and keyboard-interactive logins
    + x11_forwarding: allow X11 forwarding
    + agent_forwarding: allow agent forwarding
    + tcp_forwarding: allow TCP forwarding (ssh -L/-R)
    + max_auth_tries: authentication attempts per connection
    + login_grace_time: seconds to log in before sshd hangs up
    + max_startups: unauthenticated connections: ``start:rate:full`` (random early drop)
    + present: False removes the drop-in (Debian's defaults come back) and reloads sshd
    + path: the drop-in file
    + reload: reload sshd when the drop-in changed (live sessions survive a reload)

    The candidate drop-in is tested with ``sshd -t`` as the first Include of a copy of
    sshd_config; when sshd rejects it the operation fails and the live file stays. Before
    password logins are turned off, the deploying user must have keys in its authorized_keys and
    this session must not have logged in with a password (when the journal tells): else the
    operation stops, nothing changed.

    **Example:**

    .. code:: python

        hardening.sshd(name="sshd: keys only, modern algorithms", permit_root_login="no")
    """
    current = host.get_fact(FileStates, paths=[path]).get(path)
    if not present:
        if current:
            yield move_aside(path)
            if reload:
                yield "systemctl reload ssh.service"
        else:
            host.noop(f"{path} does not exist")
        return
    text = render_sshd(
        permit_root_login=permit_root_login, password_authentication=password_authentication,
        x11_forwarding=x11_forwarding, agent_forwarding=agent_forwarding, tcp_forwarding=tcp_forwarding,
        max_auth_tries=max_auth_tries, login_grace_time=login_grace_time, max_startups=max_startups,
    )
    content_changed = content_differs(text, current)
    if content_changed and not password_authentication:
        login = host.get_fact(SshLogin)
        if not login["keys"]:
            raise OperationError(
                f"refusing to turn SSH password logins off: {login['user']} has no key in ~/.ssh/authorized_keys "
                "(you would be locked out). Fix: install your public key (ssh-copy-id) or set hardening_ssh_password_auth = True"
            )
        if login["method"] not in (None, "publickey"):
            raise OperationError(
                f"refusing to turn SSH password logins off: this deploy logged in with `{login['method']}`, not a key "
                "(you would be locked out). Fix: deploy with ssh_key set to a key in authorized_keys, or set hardening_ssh_password_auth = True"
            )
    changed = yield from write_file(path, text, current, mode="644", check=SSHD_CHECK, check_name="sshd -t")
    if reload and content_changed:
        yield "systemctl reload ssh.service"
    if not changed:
        host.noop(f"{path} is up to date")


# --- firewall -------------------------------------------------------------------------------


def _networks(values, what: str) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) networks of `values` (addresses or CIDRs), checked and normalised."""
    v4, v6 = [], []
    for value in values or []:
        try:
            net = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise OperationError(f"{what}: `{value}` is not an address or network") from None
        (v4 if net.version == 4 else v6).append(str(net))
    return sorted(set(v4)), sorted(set(v6))


def _from(values, what: str, match: str) -> list[str]:
    """`match accept` rules from each address family of `values` (none when empty)."""
    v4, v6 = _networks(values, what)
    rules = []
    if v4:
        rules.append(f"ip saddr {{ {', '.join(v4)} }} {match} accept")
    if v6:
        rules.append(f"ip6 saddr {{ {', '.join(v6)} }} {match} accept")
    return rules


def _refuse_own_lockout(ssh_networks, client: str | None) -> None:
    """OperationError when the deploying session's address (`client`; None: unknown, no check)
    is outside every SSH network: the new rules would let this session finish (established
    connections stay) and refuse the next run."""
    if not client:
        return
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    v4, v6 = _networks(ssh_networks, "ssh_networks")
    if not any(address in ipaddress.ip_network(net) for net in (v4 if address.version == 4 else v6)):
        raise OperationError(
            f"refusing to load firewall rules that allow SSH only from {', '.join(v4 + v6)}: this deploy connects from "
            f"{address} and could not log in again. Fix: add {address} (or its network) to hardening_ssh_networks, "
            "or deploy from an allowed address"
        )


def _ports(ports) -> str:
    return "{ " + ", ".join(str(p) for p in ports) + " }"


def render_firewall(ssh_networks: list[str], ssh_port: int = 22, **allowed) -> str:
    """
    The nftables file: it replaces the table `inet homecloud` only (validates its arguments).
    `allowed`: the other arguments of the ``firewall`` operation (vrrp_peers, k3s_nodes, ...).
    """
    unknown = set(allowed) - FIREWALL_SOURCES
    if unknown:
        raise OperationError(f"unknown firewall arguments: {', '.join(sorted(unknown))}")
    vrrp_peers, k3s_nodes, ingress = allowed.get("vrrp_peers"), allowed.get("k3s_nodes"), allowed.get("ingress")
    api_networks = allowed.get("api_networks")
    syncthing_peers, syncthing_networks = allowed.get("syncthing_peers"), allowed.get("syncthing_networks")
    smb_networks, nfs_networks, nfs_ports = allowed.get("smb_networks"), allowed.get("nfs_networks"), allowed.get("nfs_ports")
    extra_rules = allowed.get("extra_rules")
    if not ssh_networks:
        raise OperationError("ssh_networks is empty: nobody could log in")
    for rule in extra_rules or []:
        if not isinstance(rule, str) or not RULE_RE.fullmatch(rule):
            raise OperationError(f"extra rule `{rule!r}` must be one nft rule (no ; {{ }} # or line breaks)")
    rules = [
        'iif "lo" accept',
        "ct state established,related accept",
        "ct state invalid drop",
        "icmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } limit rate 20/second accept",
        "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, "
        "nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query } accept",
        "udp dport 68 accept comment \"DHCP client\"",
        "ip6 saddr fe80::/10 udp dport 546 accept comment \"DHCPv6 client\"",
    ]
    rules += _from(ssh_networks, "ssh_networks", f"tcp dport {int(ssh_port)}")
    rules += _from(vrrp_peers, "vrrp_peers", "ip protocol vrrp") if vrrp_peers else []
    if k3s_nodes:
        cluster = list(k3s_nodes) + K3S_POD_NETWORKS
        rules += _from(cluster, "k3s_nodes", f"tcp dport {_ports(K3S_TCP)}")
        rules += _from(cluster, "k3s_nodes", f"udp dport {_ports(K3S_UDP)}")
    rules += _from(api_networks, "api_networks", "tcp dport 6443") if api_networks else []
    if ingress:
        rules.append("tcp dport { 80, 443 } accept")
    if syncthing_peers or syncthing_networks:
        sources = list(syncthing_peers or []) + list(syncthing_networks or [])
        rules += _from(sources, "syncthing", "tcp dport 22000")
        rules += _from(sources, "syncthing", "udp dport { 21027, 22000 }")
    rules += _from(smb_networks, "smb_networks", "tcp dport 445")
    if nfs_networks:
        ports = _ports(["111", "2049"] + [str(int(p)) for p in nfs_ports or []])
        rules += _from(nfs_networks, "nfs_networks", f"tcp dport {ports}")
        rules += _from(nfs_networks, "nfs_networks", f"udp dport {ports}")
    rules += list(extra_rules or [])
    body = "".join(f"        {rule}\n" for rule in rules)
    return (
        "# Managed by homecloud (deploys/hardening.py): changes here are replaced on the next run.\n"
        f"# Replaces the table {TABLE} only: the rules of k3s, flannel and others stay.\n"
        f"table {TABLE} {{}}\n"
        f"delete table {TABLE}\n"
        f"table {TABLE} {{\n"
        "    chain input {\n"
        "        type filter hook input priority filter; policy drop;\n"
        f"{body}"
        "    }\n"
        "}\n"
    )


@operation()
def firewall(
    ssh_networks: list[str],
    ssh_port: int = 22,
    vrrp_peers: list[str] | None = None,
    k3s_nodes: list[str] | None = None,
    api_networks: list[str] | None = None,
    ingress: bool = False,
    syncthing_peers: list[str] | None = None,
    syncthing_networks: list[str] | None = None,
    smb_networks: list[str] | None = None,
    nfs_networks: list[str] | None = None,
    nfs_ports: list[int] | None = None,
    extra_rules: list[str] | None = None,
    present: bool = True,
):
    """
    A host firewall in its own nftables table: inbound dropped unless allowed here.

    + ssh_networks: who may connect to SSH (addresses or CIDRs, IPv4 or IPv6)
    + ssh_port: sshd's port
    + vrrp_peers: keepalived peers whose VRRP adverts (IP protocol 112) are let in
    + k3s_nodes: cluster node addresses allowed to the k3s ports (6443, 2379-2380, 10250 tcp;
      8472, 51820-51821 udp), together with the pod and service networks 10.42/16 and 10.43/16
    + api_networks: who else may reach the Kubernetes API (6443) on a k3s server: kubectl users
    + ingress: open 80 and 443 to everyone (the k3s ingress)
    + syncthing_peers: Syncthing peers (22000 tcp/udp, 21027 udp)
    + syncthing_networks: other sources allowed to Syncthing (phones on the LAN)
    + smb_networks: who may reach Samba (445)
    + nfs_networks: who may reach NFS (111, 2049 and nfs_ports, tcp and udp)
    + nfs_ports: the pinned NFSv3 helper ports (mountd, statd, lockd)
    + extra_rules: more rules of the input chain, e.g. ``tcp dport 8080 ip saddr 192.168.1.0/24 accept``
    + present: False removes the table, the unit and the rules file

    Loopback, established/related traffic, essential ICMP/ICMPv6 and DHCP client replies are
    always allowed. The rules are checked with ``nft -c -f`` before they replace the live file;
    they are (re)loaded only when they changed or the unit is not active. New rules that would
    refuse the address this deploy connects from (when the node can tell it) are refused
    before any change: the next run could not log in.

    **Example:**

    .. code:: python

        hardening.firewall(
            name="Host firewall",
            ssh_networks=["192.168.1.0/24"],
            vrrp_peers=["192.168.1.12"],
            smb_networks=["192.168.1.0/24"],
        )
    """
    states = host.get_fact(FileStates, paths=[FIREWALL_RULES, FIREWALL_UNIT_PATH])
    unit = unit_states([FIREWALL_UNIT])[FIREWALL_UNIT]
    if not present:
        if states.get(FIREWALL_UNIT_PATH) or unit["running"]:
            yield f"systemctl disable --now {FIREWALL_UNIT}"
        if states.get(FIREWALL_UNIT_PATH):
            yield f"rm -f {FIREWALL_UNIT_PATH} && systemctl daemon-reload"
        if states.get(FIREWALL_RULES):
            yield f"rm -f {FIREWALL_RULES}"
        if not any(states.values()) and not unit["running"]:
            host.noop("the homecloud firewall is not installed")
        return
    text = render_firewall(
        ssh_networks, ssh_port, vrrp_peers=vrrp_peers, k3s_nodes=k3s_nodes, api_networks=api_networks, ingress=ingress,
        syncthing_peers=syncthing_peers, syncthing_networks=syncthing_networks, smb_networks=smb_networks,
        nfs_networks=nfs_networks, nfs_ports=nfs_ports, extra_rules=extra_rules,
    )
    if content_differs(text, states.get(FIREWALL_RULES)):
        _refuse_own_lockout(ssh_networks, host.get_fact(SshLogin)["client"])
    unit_file = put_texts([{"dest": FIREWALL_UNIT_PATH, "text": FIREWALL_UNIT_TEXT}], states=states)[FIREWALL_UNIT_PATH]
    yield from unit_file
    if unit_file:
        yield "systemctl daemon-reload"
    rules_changed = yield from write_file(FIREWALL_RULES, text, states.get(FIREWALL_RULES), mode="600", check="nft -c -f {}", check_name="nft")
    if not unit["enabled"]:
        yield f"systemctl enable {FIREWALL_UNIT}"
    if rules_changed or unit_file or not unit["running"]:
        yield f"systemctl restart {FIREWALL_UNIT}"
    elif unit["enabled"]:
        host.noop("the homecloud firewall is up to date")


# --- sysctls --------------------------------------------------------------------------------


@operation()
def sysctls(
    values: dict[str, str],
    present: bool = True,
    path: str = "/etc/sysctl.d/60-homecloud-hardening.conf",
):
    """
    Hardening sysctls: set now where the host lets them be written, persisted for every boot.

    + values: {key: value}, e.g. {"kernel.kptr_restrict": "2"}
    + present: False removes the file (live values stay until the next boot)
    + path: the sysctl.d file

    A key this host cannot write now (a container's read-only /proc/sys, a kernel without the
    key, e.g. no Yama) is not set and reported; it stays in the file, which the kernel of a
    real board applies at boot (systemd-sysctl skips what it cannot set).

    **Example:**

    .. code:: python

        hardening.sysctls(name="Kernel hardening", values={"kernel.dmesg_restrict": "1"})
    """
    current = host.get_fact(FileStates, paths=[path]).get(path)
    if not present:
        if current:
            yield StringCommand("rm -f", QuoteString(path))
        else:
            host.noop(f"{path} does not exist")
        return
    if not values:
        raise OperationError("values must hold at least one sysctl")
    for key, value in values.items():
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", key) or "\n" in str(value):
            raise OperationError(f"`{key} = {value}` is not a sysctl setting")
    keys = sorted(values)
    live = host.get_fact(Sysctls, keys=keys)
    changed = False
    skipped = []
    for key in keys:
        want = " ".join(str(values[key]).split())
        now = live.get(key) or {"value": None, "writable": False}
        if now["value"] == want:
            continue
        if not now["writable"]:
            skipped.append(key)
            continue
        yield StringCommand("sysctl", "-w", StringCommand(QuoteString(key), "=", QuoteString(want), _separator=""))
        changed = True
    text = "# homecloud: hardening sysctls (deploys/hardening.py), applied at boot by systemd-sysctl\n"
    text += "".join(f"{key} = {' '.join(str(values[key]).split())}\n" for key in keys)
    written = yield from write_file(path, text, current)
    if not changed and not written:
        reason = f"; not settable here (read-only or absent): {', '.join(skipped)}" if skipped else ""
        host.noop(f"{len(keys) - len(skipped)} sysctls already have their values{reason}")
