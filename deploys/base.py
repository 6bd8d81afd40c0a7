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

Every step decides on the node from facts: a second run changes nothing.
"""

from pyinfra import host, state

from homecloud.cluster import address, cluster_nodes
from homecloud.model import check_state, is_ip
from operations import base, raspberrypi

check_state(state)

data = host.data

if data.get("base_manage_hostname", True):
    # Inventory names that are addresses (pyinfra allows them) are not host names: then only
    # the /etc/hosts block is written for the nodes that have names.
    names = {h.name: address(h) for h in cluster_nodes(state) if not is_ip(h.name)}
    if not is_ip(host.name):
        base.hosts(
            name="Host name and cluster nodes in /etc/hosts",
            hostname=host.name,
            nodes=names,
        )

if data.get("base_disable_swap", True):
    base.swap_off(name="Swap off now and at boot")

if data.get("base_time_sync", True):
    base.time_sync(name="Clock in sync (systemd-timesyncd)")

modules = list(data.get("base_kernel_modules") or [])
if modules:
    base.kernel_modules(name="Kernel modules for k3s", modules=modules)

sysctls = dict(data.get("base_sysctls") or {})
if sysctls:
    base.sysctls(name="sysctls for k3s", values={str(k): str(v) for k, v in sysctls.items()})

legacy = data.get("base_iptables_legacy", "auto")
if legacy is not False:
    base.iptables_legacy(
        name="iptables backend k3s works with",
        auto=(legacy == "auto"),
    )

if data.get("rpi_cgroup_flags", True):
    raspberrypi.cgroup_flags(name="Raspberry Pi: cgroup flags on the kernel command line")
    raspberrypi.reboot_for_flags(
        name="Raspberry Pi: reboot for new boot flags (one node at a time)",
        reboot=bool(data.get("rpi_reboot", True)),
        _serial=True,
    )
