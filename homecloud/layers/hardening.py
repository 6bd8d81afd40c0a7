"""
Layer 0b, host hardening on every host (right after base): sshd keys-only with modern
algorithms, a host firewall in an nftables table of its own, kernel/network sysctls and
unattended security upgrades. Each part has a switch; all are on by default.
"""

from __future__ import annotations

import ipaddress
import re

from pyinfra.api import deploy

from homecloud.cluster import address, group_hosts
from homecloud.schema import Cluster, Key, Kind, Layer, Section, flag
from operations import hardening as hardening_ops, system

SYSCTLS = {
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.secure_redirects": "0",
    "net.ipv4.conf.default.secure_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.default.accept_source_route": "0",
    "net.ipv6.conf.all.accept_source_route": "0",
    "net.ipv6.conf.default.accept_source_route": "0",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.conf.default.log_martians": "1",
    # Loose reverse-path filtering: strict (1) drops VRRP and flannel's asymmetric traffic.
    "net.ipv4.conf.all.rp_filter": "2",
    "net.ipv4.conf.default.rp_filter": "2",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "kernel.kptr_restrict": "2",
    "kernel.dmesg_restrict": "1",
    "kernel.yama.ptrace_scope": "1",
    "fs.protected_hardlinks": "1",
    "fs.protected_symlinks": "1",
    "fs.protected_fifos": "2",
    "fs.protected_regular": "2",
}
SECURITY_ORIGIN = "origin=Debian,codename=${distro_codename}-security,label=Debian-Security"
UNATTENDED_FILE = "/etc/apt/apt.conf.d/52homecloud-unattended"
TIME_RE = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
ORIGIN_RE = re.compile(r'[^"\n\r;]+')
RULE_RE = hardening_ops.RULE_RE


def _bad_networks(value) -> list:
    bad = []
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            bad.append(item)
    return bad


def check(err, cluster: Cluster) -> None:
    for spec in cluster.specs:
        data = spec.data
        if not data.get("hardening_enabled", True):
            continue
        networks = data.get("hardening_ssh_networks")
        if isinstance(networks, list):
            bad = _bad_networks(networks)
            if bad:
                err(spec.name, "hardening_ssh_networks", f"{bad!r} are not networks", 'write CIDRs like ["192.168.1.0/24"] (empty: the LAN of node_ip/network_prefix)')
        syncthing = data.get("hardening_syncthing_networks")
        if isinstance(syncthing, list) and _bad_networks(syncthing):
            err(spec.name, "hardening_syncthing_networks", f"{_bad_networks(syncthing)!r} are not networks", 'write CIDRs like ["192.168.1.0/24"]')
        extra = data.get("hardening_firewall_extra")
        if isinstance(extra, list):
            for rule in extra:
                if not isinstance(rule, str) or not RULE_RE.fullmatch(rule):
                    err(spec.name, "hardening_firewall_extra", f"`{rule!r}` is not one nftables rule", 'give one rule per string without ; { } # or line breaks, e.g. "ip saddr 192.168.1.0/24 tcp dport 8080 accept"')
        when = data.get("hardening_reboot_time")
        if isinstance(when, str) and not TIME_RE.fullmatch(when):
            err(spec.name, "hardening_reboot_time", f"`{when}` is not a time of day", 'write it as HH:MM, e.g. "03:30"')
        origins = data.get("hardening_upgrade_origins")
        if isinstance(origins, list) and (not origins or not all(isinstance(o, str) and ORIGIN_RE.fullmatch(o) for o in origins)):
            err(spec.name, "hardening_upgrade_origins", f"`{origins!r}` is not a list of origin patterns", f'write it like ["{SECURITY_ORIGIN}"]')
        if data.get("hardening_ssh", True) and data.get("hardening_ssh_root_login") not in (None, "prohibit-password", "no"):
            err(spec.name, "hardening_ssh_root_login", f"`{data.get('hardening_ssh_root_login')}` is not a PermitRootLogin value homecloud allows", 'use "prohibit-password" (key only) or "no"; leave it None for the default')


LAYER = Layer(
    "hardening",
    [
        Section("Host hardening (deploys/hardening.py)"),
        Key("hardening_enabled", flag(), True, "The whole layer; each part has its own switch below."),
        Key(
            "hardening_ssh",
            flag(),
            True,
            "sshd: keys only (stops first if the deploying user does not log in with a key), modern\n"
            "key exchange/ciphers/MACs/host keys, no forwarding, MaxAuthTries 3, LoginGraceTime 30,\n"
            "MaxStartups 10:30:60 (/etc/ssh/sshd_config.d/00-homecloud.conf).",
        ),
        Key("hardening_ssh_password_auth", flag(), False, "True keeps password logins (not recommended)."),
        Key(
            "hardening_ssh_root_login",
            Kind(optional=True),
            None,
            'PermitRootLogin: None = "prohibit-password" (key only) when ssh_user is root, "no" otherwise;\n'
            'or "prohibit-password" / "no".',
        ),
        Key("hardening_ssh_x11_forwarding", flag(), False, ""),
        Key("hardening_ssh_agent_forwarding", flag(), False, ""),
        Key("hardening_ssh_tcp_forwarding", flag(), False, "ssh -L / -R port forwarding."),
        Key(
            "hardening_firewall",
            flag(),
            True,
            "Host firewall (nftables table inet homecloud, loaded by homecloud-firewall.service): inbound\n"
            "dropped except SSH, VRRP from the keepalived peers, k3s ports between cluster nodes, 80/443\n"
            "on k3s nodes, Syncthing, SMB and NFS from their networks.",
        ),
        Key(
            "hardening_ssh_networks",
            Kind(list),
            [],
            "Who may reach SSH (CIDRs). Empty: the LAN (node_ip/network_prefix). Must include your\n"
            "controller: a deploy from an address outside it stops before the firewall changes.",
        ),
        Key(
            "hardening_syncthing_networks",
            Kind(list),
            [],
            "Besides the dnas peers, who may reach Syncthing (22000, 21027/udp). Empty: the LAN (phones).",
        ),
        Key("hardening_firewall_extra", Kind(list), [], 'More inbound rules, one nft rule each, e.g. "ip saddr 192.168.1.0/24 tcp dport 8080 accept".'),
        Key("hardening_sysctls", flag(), True, "Kernel/network sysctls (/etc/sysctl.d/60-homecloud-hardening.conf); ip_forward is left alone."),
        Key("hardening_unattended_upgrades", flag(), True, "Install security updates every day (unattended-upgrades)."),
        Key("hardening_upgrade_origins", Kind(list), [SECURITY_ORIGIN], "Origins unattended-upgrades installs from (Origins-Pattern); default: Debian's security archive only."),
        Key(
            "hardening_reboot",
            flag(),
            False,
            "Reboot automatically when an update needs it. k3s servers are staggered by 30 minutes from\n"
            "hardening_reboot_time (inventory order), so no two servers reboot in the same window.",
        ),
        Key("hardening_reboot_time", Kind(), "03:30", "HH:MM of the first automatic reboot."),
    ],
    reads=("network_prefix", "keepalived_enabled", "keepalived_group", "samba_enabled", "nfs_enabled", "nfs_exports", "syncthing_enabled", "nfs_mountd_port", "nfs_statd_port", "nfs_lockd_port"),
    check=check,
)

HardeningSettings = LAYER.settings_class


def settings(host) -> HardeningSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


def staggered(when: str, index: int) -> str:
    """`when` (HH:MM) plus 30 minutes per `index`, wrapped at midnight."""
    hours, minutes = (int(p) for p in when.split(":"))
    total = (hours * 60 + minutes + 30 * index) % (24 * 60)
    return f"{total // 60:02d}:{total % 60:02d}"


def unattended_text(origins, reboot: bool, reboot_time: str) -> str:
    lines = [
        "// Managed by homecloud (deploys/hardening.py): changes here are replaced on the next run.",
        'APT::Periodic::Update-Package-Lists "1";',
        'APT::Periodic::Unattended-Upgrade "1";',
        'APT::Periodic::AutocleanInterval "7";',
        "// Only these origins (Debian's 50unattended-upgrades also lists the regular updates).",
        "#clear Unattended-Upgrade::Origins-Pattern;",
        "Unattended-Upgrade::Origins-Pattern {",
        *[f'        "{origin}";' for origin in origins],
        "};",
        'Unattended-Upgrade::Remove-Unused-Kernel-Packages "true";',
        f'Unattended-Upgrade::Automatic-Reboot "{"true" if reboot else "false"}";',
        f'Unattended-Upgrade::Automatic-Reboot-Time "{reboot_time}";',
        "",
    ]
    return "\n".join(lines)


@deploy("hardening")
def hardening(settings: HardeningSettings, root_login: str, firewall: dict, reboot_time: str) -> None:
    """
    The hardening parts switched on, on one host. `root_login`: sshd's PermitRootLogin;
    `firewall`: the arguments of
    hardening.firewall worked out from the inventory; `reboot_time`: this host's staggered
    automatic reboot time.
    """
    if settings.hardening_ssh:
        hardening_ops.sshd(
            name="sshd: keys only, modern algorithms, rate limits",
            permit_root_login=root_login,
            password_authentication=settings.hardening_ssh_password_auth,
            x11_forwarding=settings.hardening_ssh_x11_forwarding,
            agent_forwarding=settings.hardening_ssh_agent_forwarding,
            tcp_forwarding=settings.hardening_ssh_tcp_forwarding,
        )
    if settings.hardening_firewall:
        system.packages(name="Install nftables", packages=["nftables"])
    hardening_ops.firewall(name="Host firewall (nftables table inet homecloud)", present=bool(settings.hardening_firewall), **firewall)
    if settings.hardening_sysctls:
        hardening_ops.sysctls(name="Kernel and network hardening sysctls", values=dict(SYSCTLS))
    if settings.hardening_unattended_upgrades:
        system.packages(name="Install unattended-upgrades", packages=["unattended-upgrades"])
        system.text_file(
            name="unattended-upgrades: security origin, daily",
            path=UNATTENDED_FILE,
            text=unattended_text(settings.hardening_upgrade_origins, settings.hardening_reboot, reboot_time),
            check="apt-config -c {} dump >/dev/null",
        )


def _lan(host, prefix: int) -> str:
    return str(ipaddress.ip_network(f"{address(host)}/{int(prefix)}", strict=False))


def firewall_args(state, host, config: HardeningSettings) -> dict:
    """The arguments of hardening.firewall for `host`, from the inventory."""
    lan = _lan(host, config.network_prefix)
    args: dict = {"ssh_networks": list(config.hardening_ssh_networks) or [lan]}
    members = group_hosts(state, config.keepalived_group or "k3s_servers")
    if config.keepalived_enabled and host in members:
        args["vrrp_peers"] = [address(h) for h in members if h != host]
    k3s = group_hosts(state, "k3s_servers") + group_hosts(state, "k3s_agents")
    if host in k3s:
        args["k3s_nodes"] = [address(h) for h in k3s]
        args["ingress"] = True
    if host in group_hosts(state, "k3s_servers"):
        args["api_networks"] = args["ssh_networks"]  # kubectl from the controller, through the VIP
    if host in group_hosts(state, "dnas"):
        if config.syncthing_enabled:
            args["syncthing_peers"] = [address(h) for h in group_hosts(state, "dnas") if h != host]
            args["syncthing_networks"] = list(config.hardening_syncthing_networks) or [lan]
        if config.samba_enabled:
            # Samba has no network restriction of its own (users and passwords): the LAN.
            args["smb_networks"] = [lan]
        if config.nfs_enabled and config.nfs_exports:
            args["nfs_networks"] = sorted({str(n) for export in config.nfs_exports for n in export.get("networks", ())})
            args["nfs_ports"] = [config.nfs_mountd_port, config.nfs_statd_port, config.nfs_lockd_port]
    args["extra_rules"] = list(config.hardening_firewall_extra)
    return args


def apply(state, host) -> None:
    """The layer on `host`: every host of the inventory gets it."""
    config = settings(host)
    if not config.hardening_enabled:
        return
    servers = group_hosts(state, "k3s_servers")
    index = servers.index(host) if host in servers else 0
    root_login = config.hardening_ssh_root_login or ("prohibit-password" if host.data.get("ssh_user") in (None, "root") else "no")
    hardening(config, root_login=root_login, firewall=firewall_args(state, host, config), reboot_time=staggered(config.hardening_reboot_time, index))
