"""
Layer 0b: host hardening on every host (run right after deploys/base.py).

    pyinfra -y inventories/pi.py deploys/hardening.py

- sshd: keys only (the deploy stops first when the deploying user does not log in with a key),
  modern key exchange/ciphers/MACs/host keys, no forwarding, rate limits; a drop-in tested with
  `sshd -t` before it goes live, sshd reloaded (sessions survive).
- A host firewall in its own nftables table (`inet homecloud`, homecloud-firewall.service):
  inbound dropped except what the cluster needs, from where it needs it.
- Kernel/network sysctls (ip_forward untouched), unattended security upgrades.

Each part has a switch (hardening_*). The layer is homecloud/layers/hardening.py; this file
validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.layers import hardening
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
hardening.apply(state, host)
