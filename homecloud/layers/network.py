"""
The network every layer shares: node addresses, the LAN, the cluster's virtual IP. No deploy of
its own; its rules span layers (the VIP in the holders' subnet, unique node addresses) and live
with the cluster-wide checks in homecloud/model.py.
"""

from __future__ import annotations

from homecloud.schema import INTERFACE_RE, Key, Kind, Layer, Section, count

LAYER = Layer(
    "network",
    [
        Section("The network"),
        Key(
            "node_ip",
            Kind(optional=True),
            None,
            "The node's address on the home LAN (host data). Defaults to the inventory host name when that\n"
            "is an IPv4 address; otherwise it is required. Used for /etc/hosts, VRRP peers, k3s node-ip.",
        ),
        Key(
            "node_interface",
            Kind(pattern=INTERFACE_RE, bad="is not an interface name", fix="set it to the LAN interface, e.g. eth0"),
            "eth0",
            "The interface that carries node_ip and the virtual IP.",
        ),
        Key("network_prefix", count(8, 30), 24, "Prefix length of the LAN the nodes share (24 for 192.168.1.0/24). The VIP must lie in it."),
        Key(
            "vip",
            Kind(optional=True),
            None,
            "The cluster's virtual IP: one address, held by one healthy server at a time (keepalived).\n"
            "Required when keepalived or k3s is on. Pick a free address outside your router's DHCP range.",
        ),
    ],
)

NetworkSettings = LAYER.settings_class


def settings(host) -> NetworkSettings:
    """This layer's settings from the host's merged data, with the schema's defaults."""
    return LAYER.settings(host)
