"""
Layer 1: the cluster's virtual IP, held by one healthy node of keepalived_group (k3s_servers).

    pyinfra -y inventories/pi.py deploys/keepalived.py

- keepalived from the distribution, one VRRP instance for `vip/network_prefix` on
  node_interface; unicast peers from the inventory (keepalived_unicast) or multicast;
  priorities from the inventory order (or keepalived_priority); keepalived_nopreempt.
- A health check decides who may hold the VIP: keepalived_check_script, or by default "the
  local k3s API answers TLS on 127.0.0.1:6443" (k3s answers 401 to anonymous requests: any
  answer means alive). It runs as the unprivileged `keepalived_script` user
  (enable_script_security).
- The config (it holds keepalived_auth_pass) is 0600 root; a new one is tested with
  `keepalived -t` before it replaces the working one, and keepalived is reloaded only then.

Which node holds the VIP, and each node's VRRP state:

    pyinfra inventories/pi.py fact facts.keepalived.VrrpStatus interface=eth0 vip=<vip> --limit k3s_servers
"""

from pyinfra import host, state
from pyinfra.api import HiddenValue

from homecloud.cluster import address, group_hosts, vrrp_priority
from homecloud.fingerprints import check_secrets, salt_for
from homecloud.model import check_state
from operations import keepalived, secrets, system

check_state(state)
check_secrets(state)

data = host.data
SCRIPT_USER = "keepalived_script"

members = group_hosts(state, data.get("keepalived_group", "k3s_servers"))

if data.get("keepalived_enabled", True) and host in members:
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
    unicast = bool(data.get("keepalived_unicast", True))
    auth_pass = HiddenValue(str(data.get("keepalived_auth_pass") or ""))
    keepalived.vip(
        name="keepalived: the virtual IP",
        vip=str(data.get("vip")),
        prefix=int(data.get("network_prefix")),
        interface=data.get("node_interface"),
        router_id=int(data.get("keepalived_router_id")),
        priority=vrrp_priority(state, host),
        auth_pass=auth_pass,
        node_name=host.name,
        unicast_src_ip=address(host) if unicast else None,
        unicast_peers=[address(h) for h in members if h != host] if unicast else None,
        nopreempt=bool(data.get("keepalived_nopreempt", False)),
        advert_int=int(data.get("keepalived_advert_int", 1)),
        check_script=data.get("keepalived_check_script"),
        notify_script=data.get("keepalived_notify_script"),
        script_user=SCRIPT_USER,
    )
    # A rotated password (python -m homecloud.secrets rotate) reaches every peer in the operation
    # above, which pyinfra runs on all of them in parallel; the check refuses a rotation that would
    # leave a peer out of the run. A peer still on the old password drops the adverts of the
    # others and takes the VIP too after 3 adverts: the reloads must land closer than that.
    secrets.fingerprints(
        name="Fingerprint of the keepalived password (no secret stored)",
        salt=salt_for(state, host),
        secrets={"keepalived_auth_pass": auth_pass},
    )
    system.services(name="keepalived enabled and running", services=["keepalived.service"])
