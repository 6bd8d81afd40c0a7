"""
The Vagrant lab: the homecloud cluster in VMs on this machine (see the Vagrantfile).

    python -m lab.vagrant up
    pyinfra -y inventories/vagrant.py deploys/all.py

The hosts are the running VMs, read from Vagrant (`vagrant status`, `vagrant ssh-config`) with
the topology of lab/vagrant_topology.json, the same file the Vagrantfile reads: node1-node3 in
k3s_servers, node4 in k3s_agents, node1 and node2 in dnas (HOMECLOUD_VAGRANT_NODES=8 adds
agents). When a VM is not running, loading this inventory stops with the command to run.

The VMs are real machines with internet access, so unlike the local lab this runs the real
thing: k3s downloaded from GitHub, Longhorn's prerequisites, the kernel NFS server. Each dnas
node has one extra blank disk; `dnas_format = True` lets the dnas layer format it (ext4,
LABEL=homecloud-data) because it is blank, and never a disk that carries data.

Secrets (VRRP and Samba passwords) are generated once into .secrets/vagrant.json.
"""

from homecloud.model import check_inventory
from lab.vagrant import inventory_groups

_groups = inventory_groups()

k3s_servers = _groups["k3s_servers"]
k3s_agents = _groups["k3s_agents"]
dnas = _groups["dnas"]

# Stop here, before pyinfra connects to anything, if the inventory or its data is wrong.
check_inventory(globals(), __file__)
