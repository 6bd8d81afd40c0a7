"""
Cluster-wide views of the inventory for the deploy files: group members in inventory order,
node addresses, the first server, VRRP priorities. Everything here is derived from the
inventory only (never from the hosts), so it cannot change during a run.
"""

from __future__ import annotations

from pyinfra.api import Host, State

from .schema import HostSpec, node_ip


def group_hosts(state: State, group: str) -> list[Host]:
    """The hosts of a group, in inventory order (empty list for an unknown group)."""
    try:
        return list(state.inventory.get_group(group))
    except Exception:
        return []


def in_group(host: Host, group: str) -> bool:
    return group in host.groups


def address(host: Host) -> str:
    """The node's LAN address: node_ip, or the host name / ssh_hostname when that is an IPv4."""
    ip = node_ip(HostSpec(host.name, tuple(host.groups), host.data.dict()))
    if ip is None:  # the validation refuses this before any deploy runs
        raise ValueError(f"{host.name}: node_ip is not set")
    return ip


def cluster_nodes(state: State) -> list[Host]:
    """Every host of the inventory, in inventory order."""
    return list(state.inventory)


def first_server(state: State) -> Host | None:
    servers = group_hosts(state, "k3s_servers")
    return servers[0] if servers else None


def vrrp_priority(members: list[Host], host: Host, priority: int | None) -> int:
    """`priority` (keepalived_priority) when set, else 150 for the first member, 140, 130 ..."""
    if priority:
        return int(priority)
    index = [h.name for h in members].index(host.name) if host in members else len(members)
    return max(1, 150 - 10 * index)
