"""
Layer 1, the cluster's virtual IP: keepalived on the hosts of keepalived_group, one VRRP
instance, unicast peers, a health check deciding who may hold the VIP.
"""

from __future__ import annotations

from pyinfra.api import HiddenValue, deploy

from homecloud.cluster import address, group_hosts, vrrp_priority
from homecloud.schema import GROUPS, KEEPALIVED_PASS_RE, Cluster, Key, Kind, Layer, Section, count, flag, is_secret_bad
from operations import keepalived as keepalived_ops, secrets as secrets_ops, system

SCRIPT_USER = "keepalived_script"


def holders(cluster: Cluster) -> list:
    """The hosts that run keepalived: keepalived_enabled and in their keepalived_group."""
    return [s for s in cluster.specs if s.data.get("keepalived_enabled") and s.data.get("keepalived_group", LAYER.default("keepalived_group")) in s.groups]


def check(err, cluster: Cluster) -> None:
    specs = cluster.specs
    for spec in specs:
        for key in ("keepalived_check_script", "keepalived_notify_script"):
            script = spec.data.get(key)
            if isinstance(script, str) and (not script.startswith("/") or any(c in script for c in '"\n\r')):
                err(spec.name, key, f"`{script!r}` is not a command keepalived can run", "give an absolute path first (keepalived runs it without a shell), with no double quotes or line breaks, e.g. /usr/bin/systemctl is-active --quiet k3s")
    for spec in holders(cluster):
        secret = spec.data.get("keepalived_auth_pass")
        if secret is not None and not isinstance(secret, str):
            continue  # reported by the type check
        if is_secret_bad(secret):
            err(
                spec.name,
                "keepalived_auth_pass",
                "secret missing or left at an example value",
                "set it to a random password of 1-8 characters, e.g. secret('keepalived_auth_pass', length=8)",
            )
        elif len(secret) > 8:
            err(spec.name, "keepalived_auth_pass", f"{len(secret)} characters, VRRP PASS auth keeps only 8", "use at most 8 characters")
        elif not KEEPALIVED_PASS_RE.fullmatch(secret):
            err(spec.name, "keepalived_auth_pass", "contains a blank, a quote, # or ! (keepalived would cut it there)", "use letters, digits and punctuation other than those")
    if any(s.data.get("keepalived_enabled") for s in specs):
        group = specs[0].data.get("keepalived_group")
        if group in GROUPS and not any(group in s.groups for s in specs):
            err("inventory", "keepalived_group", f"group `{group}` has no hosts", "add hosts to it or set keepalived_enabled = False")


LAYER = Layer(
    "keepalived",
    [
        Section("keepalived: the virtual IP (deploys/keepalived.py)"),
        Key("keepalived_enabled", flag(), True),
        Key("keepalived_group", Kind(choices=GROUPS), "k3s_servers", 'The group whose hosts share the VIP (k3s_servers; "dnas" for a NAS-only cluster).'),
        Key("keepalived_router_id", count(1, 255), 51, "VRRP virtual_router_id, 1-255, unique on your LAN."),
        Key("keepalived_auth_pass", Kind(optional=True), None, "SECRET: VRRP authentication password, 1-8 characters (VRRP PASS auth is limited to 8)."),
        Key("keepalived_unicast", flag(), True, "Unicast peers (works on Wi-Fi and switches that drop multicast). False: multicast."),
        Key("keepalived_nopreempt", flag(), False, "True: a recovered node does not take the VIP back from the current holder."),
        Key("keepalived_advert_int", count(1, 255), 1, "Seconds between VRRP adverts; failover takes about 3-4 adverts."),
        Key(
            "keepalived_check_script",
            Kind(optional=True),
            None,
            "Health check run by keepalived on each holder; None: the local k3s API answers on 6443\n"
            "(any TLS answer - k3s replies 401 to anonymous requests). Any command: exit 0 means healthy.",
        ),
        Key("keepalived_notify_script", Kind(optional=True), None, "Optional script run on state changes (keepalived `notify`), e.g. to send a message."),
        Key("keepalived_priority", count(1, 254, optional=True), None, "Per host (optional): VRRP priority 1-254. Default: from inventory order, first is highest."),
    ],
    reads=("vip", "network_prefix", "node_interface"),
    check=check,
)

KeepalivedSettings = LAYER.settings_class


def settings(host) -> KeepalivedSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


@deploy("keepalived")
def keepalived(settings: KeepalivedSettings, node_name: str, priority: int, source_ip: str, peers: list[str], salt: str) -> None:
    """
    keepalived holding the VIP on one member of keepalived_group: `priority` its VRRP priority,
    `source_ip` its address and `peers` the other members' (used when keepalived_unicast);
    `salt` keys the fingerprint of the password kept on the node (homecloud/fingerprints.py).
    """
    system.packages(
        name="Install keepalived (and curl for the default health check)",
        packages=["keepalived", "curl"],
    )
    system.system_user(
        name=f"User {SCRIPT_USER} that runs keepalived's scripts",
        user=SCRIPT_USER,
        shell="/usr/sbin/nologin",
        home="/nonexistent",
    )
    unicast = settings.keepalived_unicast
    auth_pass = HiddenValue(str(settings.keepalived_auth_pass or ""))
    keepalived_ops.vip(
        name="keepalived: the virtual IP",
        vip=str(settings.vip),
        prefix=settings.network_prefix,
        interface=settings.node_interface,
        router_id=settings.keepalived_router_id,
        priority=priority,
        auth_pass=auth_pass,
        node_name=node_name,
        unicast_src_ip=source_ip if unicast else None,
        unicast_peers=list(peers) if unicast else None,
        nopreempt=settings.keepalived_nopreempt,
        advert_int=settings.keepalived_advert_int,
        check_script=settings.keepalived_check_script,
        notify_script=settings.keepalived_notify_script,
        script_user=SCRIPT_USER,
    )
    # A rotated password (python -m homecloud.secrets rotate) reaches every peer in the operation
    # above, which pyinfra runs on all of them in parallel; the check refuses a rotation that would
    # leave a peer out of the run. A peer still on the old password drops the adverts of the
    # others and takes the VIP too after 3 adverts: the reloads must land closer than that.
    secrets_ops.fingerprints(
        name="Fingerprint of the keepalived password (no secret stored)",
        salt=salt,
        secrets={"keepalived_auth_pass": auth_pass},
    )
    system.services(name="keepalived enabled and running", services=["keepalived.service"])


def apply(state, host) -> None:
    """The layer on `host` when keepalived is on and the host is in keepalived_group."""
    from homecloud.fingerprints import salt_for
    config = settings(host)
    members = group_hosts(state, config.keepalived_group)
    if config.keepalived_enabled and host in members:
        keepalived(
            config,
            node_name=host.name,
            priority=vrrp_priority(members, host, config.keepalived_priority),
            source_ip=address(host),
            peers=[address(h) for h in members if h != host],
            salt=salt_for(state, host),
        )
