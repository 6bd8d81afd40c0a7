"""
An example real cluster: four Raspberry Pis on a home LAN (192.168.1.0/24).

Copy this file (e.g. to inventories/home.py), change the names and addresses, then run:

    pyinfra --dry inventories/home.py deploys/all.py   # validate, connect, show what would change
    pyinfra inventories/home.py deploys/all.py         # do it

Groups:
- k3s_servers: control-plane nodes with embedded etcd; they also share the virtual IP (VIP).
  Use 1, 3 or 5. Two servers are refused: etcd needs a majority of servers alive, and the
  majority of 2 is 2, so two servers survive no more failures than one while doubling the
  chance that a failure stops the cluster (a network split leaves neither side a quorum).
- k3s_agents: worker nodes that join the servers through the VIP.
- dnas: nodes that serve the decentralized NAS (Syncthing + Samba + NFS over one data
  folder). A node can be a k3s server or agent and a dnas node at the same time.

Secrets (VRRP password, Samba passwords) come from `secret(...)`: set HOMECLOUD_<KEY> in the
environment, or let it generate a value once into .secrets/homecloud.json (mode 0600, not
committed) and read it there. The k3s token is generated on the first server. Back that store up;
from another machine or a fresh clone, import it first (python -m homecloud.secrets export /
import, see the README): a deploy whose secrets differ from the cluster's stops before any change.
"""

from homecloud.model import check_inventory
from homecloud.secrets import secret

# Cluster-wide data: anything from group_data/all.py can be set here. It is given to every host
# as host data, because pyinfra lets group_data/all.py override data written inline in `all`.
_cluster = {
    "ssh_user": "pi",
    "_sudo": True,
    "node_interface": "eth0",
    "network_prefix": 24,
    "vip": "192.168.1.240",
    "keepalived_router_id": 51,
    "keepalived_auth_pass": secret("keepalived_auth_pass", length=8),
    "k3s_install": "download",
    "k3s_version": "v1.36.4+k3s1",
    "samba_users": {"alice": secret("samba_alice", length=16)},
    "samba_shares": [
        {"name": "data", "path": "data", "read_only": False, "valid_users": ["alice"], "guest_ok": False},
    ],
    "nfs_backend": "kernel",
    # NFS has no password: read-only to the LAN; read-write only to named hosts, e.g.
    # {"path": "data", "networks": ["192.168.1.20/32"], "read_only": False}.
    "nfs_exports": [{"path": "data", "networks": ["192.168.1.0/24"], "read_only": True}],
    "syncthing_gui_password": secret("syncthing_gui_password", length=24),
    "syncthing_devices": [
        # A phone, by its Syncthing device ID (Syncthing app > Show device ID):
        # {"name": "phone", "id": "ABCDEFG-HIJKLMN-...", "folders": ["homecloud-data"]},
    ],
}


def _node(name, ip, **extra):
    return (name, {"ssh_hostname": ip, "node_ip": ip, **_cluster, **extra})


k3s_servers = [
    # The first server runs `cluster-init`; the others join it through the VIP. pi1 and pi2
    # also serve the NAS from a USB drive labelled homecloud-data (mkfs.ext4 -L homecloud-data).
    _node("pi1", "192.168.1.11", node_arch="arm64", dnas_device="LABEL=homecloud-data"),
    _node("pi2", "192.168.1.12", node_arch="arm64", dnas_device="LABEL=homecloud-data"),
    _node("pi3", "192.168.1.13", node_arch="arm64"),
]

k3s_agents = [
    # An older 32-bit Pi (armv7): Longhorn does not run there, so it is turned off for it.
    _node("pi4", "192.168.1.14", node_arch="armhf", longhorn_enabled=False),
]

# Host names only: their data is given above.
dnas = ["pi1", "pi2"]

# Stop here, before pyinfra connects to anything, if the inventory or its data is wrong.
check_inventory(globals(), __file__)
