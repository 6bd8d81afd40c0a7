"""
The local lab as a homecloud inventory (see `python -m lab`): nspawn nodes on a bridge.

    sudo .venv/bin/python -m lab up                     # HOMECLOUD_LAB=<name> for another instance
    sudo .venv/bin/pyinfra -y inventories/lab.py deploys/all.py

Hosts, groups and addresses come from the lab's state file
(/var/lib/homecloud-lab/<instance>/state.json). The data has the shape of inventories/pi.py,
with what the lab can and cannot run:

- k3s_install="off" and longhorn_enabled=False: kubelet needs writable cgroups and /dev/kmsg,
  Longhorn needs iscsid and dm_crypt; none of that exists in an nspawn container here;
- nfs_backend="ganesha": there is no kernel NFS server (nfsd) in this kernel;
- keepalived checks sshd (a service every lab node runs) instead of the k3s API;
- dnas_device="LABEL=homecloud-data": each dnas node has a real ext4 disk (a loop device).

Secrets are generated once into .secrets/lab-<instance>.json ($HOMECLOUD_SECRETS_DIR/lab-<instance>.json when
that is set: tests/lab/test_secrets.py deploys from a second store that way).
"""

import os
import sys

from homecloud.model import InventoryError, check_inventory
from homecloud.secrets import secret

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lab import core as _core  # noqa: E402

_instance = _core.instance_name()
_state = _core.load_state(_instance)
if _state is None:
    raise InventoryError(f"lab is not up: run python -m lab up (instance `{_instance}`, state {_core.state_path(_instance)})")

_store = f"lab-{_instance}"
_cluster = {
    "ssh_user": "root",
    "ssh_key": _state["ssh_key"],
    "ssh_known_hosts_file": "/dev/null",
    "ssh_strict_host_key_checking": "off",
    "node_interface": _state["interface"],
    "network_prefix": _state["prefix"],
    "vip": _state["vip"],
    "keepalived_router_id": 51,
    "keepalived_auth_pass": secret("keepalived_auth_pass", length=8, store=_store),
    # k3s cannot run in a lab node: keepalived checks a service the lab does run.
    "keepalived_check_script": "/usr/bin/systemctl is-active --quiet ssh",
    "k3s_install": "off",
    "longhorn_enabled": False,
    # Two users, so the tests can prove a user outside a share's valid_users is refused.
    "samba_users": {
        "alice": secret("samba_alice", length=16, store=_store),
        "bob": secret("samba_bob", length=16, store=_store),
    },
    "samba_shares": [
        {"name": "data", "path": "data", "read_only": False, "valid_users": ["alice"], "guest_ok": False},
        {"name": "photos", "path": "photos", "read_only": False, "valid_users": ["alice", "bob"], "guest_ok": False},
    ],
    "nfs_backend": "ganesha",
    # NFS has no password: read-write to the controller (the tests' client) only.
    "nfs_exports": [{"path": "data", "networks": [f"{_state['controller_ip']}/32"], "read_only": False}],
    "syncthing_devices": [],
    "syncthing_gui_password": secret("syncthing_gui_password", length=24, store=_store),
}


def _node(node):
    data = {
        "ssh_hostname": node["ip"],
        "node_ip": node["ip"],
        "lab_node": node["name"],
        "node_arch": node["arch"],
        **_cluster,
    }
    if "dnas" in node["groups"]:
        data["dnas_device"] = "LABEL=homecloud-data"
    if node["arch"] != "amd64":
        # qemu-user (the lab's arm64 node) emulates no netfilter netlink socket: nft cannot
        # load any ruleset there ("Unable to initialize Netlink socket"). On a real board it
        # can; the firewall is proven on the amd64 nodes, its rules are the same text.
        data["hardening_firewall"] = False
    if node["name"] == "node1":
        # Backups (tests/lab/test_backup.py): over SFTP to node3, and to node1's spare disk. A
        # smaller lab (the arm64 job's: node1 and node2) backs up to its other node instead.
        data["backup_enabled"] = True
        data["backup_passphrase"] = secret("backup_passphrase", length=32, store=_store)
        data["backup_targets"] = [
            *([{"name": _sftp_target, "type": "sftp", "host": _sftp_target}] if _sftp_target else []),
            {"name": "spare", "type": "local", "device": "LABEL=homecloud-spare", "path": "restic"},
        ]
    return (node["name"], data)


_names = [n["name"] for n in _state["nodes"]]
_sftp_target = "node3" if "node3" in _names else next((n for n in _names if n != "node1"), None)


k3s_servers = [_node(n) for n in _state["nodes"] if "k3s_servers" in n["groups"]]
k3s_agents = [_node(n) for n in _state["nodes"] if "k3s_agents" in n["groups"]]
# Host names only: their data is given above.
dnas = [n["name"] for n in _state["nodes"] if "dnas" in n["groups"]]

check_inventory(globals(), __file__)
