"""
Layer 0: the node base every node needs before k3s.

    pyinfra -y inventories/pi.py deploys/base.py

- host name = inventory name, and every cluster node in a managed block of /etc/hosts
  (base_manage_hostname);
- swap off now and at boot: fstab, dphys-swapfile, zram (base_disable_swap);
- the clock kept in sync by systemd-timesyncd unless another NTP daemon does it (base_time_sync);
- kernel modules (base_kernel_modules) and sysctls (base_sysctls), persisted for the next boot;
- iptables-legacy only where the installed iptables needs it (base_iptables_legacy);
- Raspberry Pi: the cgroup flags on the kernel command line (rpi_cgroup_flags), and a reboot,
  one node at a time, of the nodes whose boot flags changed (rpi_reboot; False only reports).

The layer is homecloud/layers/base.py; this file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.layers import base
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
base.apply(state, host)
