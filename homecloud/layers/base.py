"""
Layer 0, the node base every node needs before k3s: host name and /etc/hosts, swap off, time
sync, kernel modules and sysctls, iptables-legacy where needed, Raspberry Pi cgroup flags and
the reboot they need.
"""

from __future__ import annotations

import re

from pyinfra.api import deploy

from homecloud.cluster import address, cluster_nodes
from homecloud.schema import Cluster, Key, Kind, Layer, Section, flag, is_ip
from operations import base as base_ops, raspberrypi

HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MODULE_RE = re.compile(r"[A-Za-z0-9_-]+")
SYSCTL_RE = re.compile(r"[A-Za-z0-9_./-]+")


def check(err, cluster: Cluster) -> None:
    for spec in cluster.specs:
        if spec.data.get("base_manage_hostname") and not is_ip(spec.name) and not HOSTNAME_RE.fullmatch(spec.name):
            err(spec.name, "inventory", "the host name is not a valid Linux host name (base_manage_hostname sets it)", "use letters, digits and - (up to 63), or set base_manage_hostname = False")
        modules = spec.data.get("base_kernel_modules")
        if isinstance(modules, list) and not all(isinstance(m, str) and MODULE_RE.fullmatch(m) for m in modules):
            err(spec.name, "base_kernel_modules", f"`{modules!r}` is not a list of module names", 'write it like ["overlay", "br_netfilter"]')
        sysctls = spec.data.get("base_sysctls")
        for key, value in sysctls.items() if isinstance(sysctls, dict) else ():
            if not isinstance(key, str) or not SYSCTL_RE.fullmatch(key) or not isinstance(value, (str, int)) or isinstance(value, bool) or "\n" in str(value):
                err(spec.name, "base_sysctls", f"`{key!r}: {value!r}` is not a sysctl setting", 'write it like "net.ipv4.ip_forward": "1"')


LAYER = Layer(
    "base",
    [
        Section("Node base (deploys/base.py)"),
        Key("base_manage_hostname", flag(), True, "Set the host name to the inventory name and write /etc/hosts entries for every node."),
        Key("base_disable_swap", flag(), True, "Turn swap off now and at boot (kubelet refuses swap): fstab entries, dphys-swapfile, zram."),
        Key("base_time_sync", flag(), True, "Keep the clock synchronised (systemd-timesyncd) - TLS and etcd need it."),
        Key(
            "base_kernel_modules",
            Kind(list),
            ["overlay", "br_netfilter"],
            "Kernel modules k3s needs; each is loaded only when not already present (built in or loaded)\n"
            "and persisted in /etc/modules-load.d/homecloud.conf.",
        ),
        Key(
            "base_sysctls",
            Kind(dict),
            {
                "net.ipv4.ip_forward": "1",
                "net.bridge.bridge-nf-call-iptables": "1",
                "net.bridge.bridge-nf-call-ip6tables": "1",
            },
            "sysctls persisted in /etc/sysctl.d/90-homecloud.conf and applied now.",
        ),
        Key(
            "base_iptables_legacy",
            Kind(choices=("auto", True, False)),
            "auto",
            'iptables: "auto" switches to iptables-legacy only where the installed iptables needs it\n'
            "(an nftables-backed iptables older than 1.8.4, per the k3s docs); True/False forces it.",
        ),
        Key("rpi_cgroup_flags", flag(), True, "Raspberry Pi: add cgroup_memory=1 cgroup_enable=memory (and cpuset) to cmdline.txt."),
        Key("rpi_reboot", flag(), True, "Reboot hosts whose boot flags changed, one at a time, and wait for them. False: only report."),
    ],
    check=check,
)

BaseSettings = LAYER.settings_class


def settings(host) -> BaseSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)


@deploy("base")
def base(settings: BaseSettings, hostname: str | None, nodes: dict[str, str]) -> None:
    """
    The node base on one host. `hostname`: the name to give it (None when the inventory names
    it by address); `nodes`: name -> address of every cluster node with a name, for /etc/hosts.
    Every step decides on the node from facts: a second run changes nothing.
    """
    if settings.base_manage_hostname and hostname is not None:
        base_ops.hosts(name="Host name and cluster nodes in /etc/hosts", hostname=hostname, nodes=nodes)
    if settings.base_disable_swap:
        base_ops.swap_off(name="Swap off now and at boot")
    if settings.base_time_sync:
        base_ops.time_sync(name="Clock in sync (systemd-timesyncd)")
    if settings.base_kernel_modules:
        base_ops.kernel_modules(name="Kernel modules for k3s", modules=list(settings.base_kernel_modules))
    if settings.base_sysctls:
        base_ops.sysctls(name="sysctls for k3s", values={str(k): str(v) for k, v in settings.base_sysctls.items()})
    if settings.base_iptables_legacy is not False:
        base_ops.iptables_legacy(name="iptables backend k3s works with", auto=(settings.base_iptables_legacy == "auto"))
    if settings.rpi_cgroup_flags:
        raspberrypi.cgroup_flags(name="Raspberry Pi: cgroup flags on the kernel command line")
        raspberrypi.reboot_for_flags(
            name="Raspberry Pi: reboot for new boot flags (one node at a time)",
            reboot=settings.rpi_reboot,
            _serial=True,
        )


def apply(state, host) -> None:
    """The layer on `host`: every host of the inventory gets it."""
    # Inventory names that are addresses (pyinfra allows them) are not host names: then only
    # the /etc/hosts block is written for the nodes that have names.
    nodes = {h.name: address(h) for h in cluster_nodes(state) if not is_ip(h.name)}
    base(settings(host), hostname=None if is_ip(host.name) else host.name, nodes=nodes)
