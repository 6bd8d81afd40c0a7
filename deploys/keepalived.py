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

The layer is homecloud/layers/keepalived.py; this file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.layers import keepalived
from homecloud.fingerprints import check_secrets
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)
keepalived.apply(state, host)
