"""
Reset: take k3s off the cluster cleanly, undoing what deploys/k3s.py and deploys/longhorn.py
did on the hosts.

    pyinfra -y inventories/pi.py deploys/reset.py

Order: the agents are drained and deleted from the cluster (on the first server), then k3s is
stopped and removed on them; then the other servers (deleting a server node also removes its
etcd member); the first server last. "Removed" means: the k3s units, the binary, /etc/rancher/k3s,
/etc/rancher/node, /var/lib/rancher/k3s, /var/lib/kubelet, /var/lib/cni, /run/k3s, the CNI links
and the k3s mounts (see facts/k3s.py RESET_PATHS) - nothing else. Then the Longhorn
modules-load file and the multipathd blacklist line homecloud added, and the homecloud context
in the controller's kubeconfig.

Kept, always: the dnas data folder and disk (dnas_path, dnas_device), Longhorn's data path
(longhorn_data_path: replicas are your data; delete it yourself), the data of k3s's
local-path volumes (/var/lib/rancher/k3s/storage, also your data), the packages installed
(open-iscsi, nfs-common, ...), and what the base and keepalived layers did (they are not part of
this reset). The fingerprint of the k3s token (homecloud/fingerprints.py) is forgotten with k3s.
"""

from pyinfra import host, state

from facts.k3s import RESET_PATHS
from homecloud.cluster import group_hosts
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.kubeconfig import server_url
from homecloud.layers import dnas, k3s as k3s_layer, longhorn as longhorn_layer
from homecloud.model import InventoryError, check_state
from operations import k3s, longhorn, secrets

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)

servers = group_hosts(state, "k3s_servers")
agents = [h for h in group_hosts(state, "k3s_agents") if h not in servers]
first_name = servers[0].name if servers else None

# Refuse a reset that would reach into user data (a dnas or Longhorn folder below a k3s path).
k3s_settings = k3s_layer.settings(host)
data_paths = {"dnas_path": dnas.settings(host).dnas_path, "longhorn_data_path": longhorn_layer.settings(host).longhorn_data_path}
for key, value in data_paths.items():
    for path in RESET_PATHS:
        if value and (value == path or value.startswith(path.rstrip("/") + "/")):
            raise InventoryError(
                f"{host.name}: {key} = {value} lies inside {path}, which the reset deletes. Move the data "
                f"first; nothing was changed on any host."
            )

if host.name == first_name and agents:
    k3s.node_removed(name="Drain and delete the agents from the cluster", node_names=[h.name for h in agents])
if host in agents:
    k3s.purged(name="Remove k3s from the agent")
if host.name == first_name and len(servers) > 1:
    k3s.node_removed(
        name="Drain and delete the other servers (and their etcd members)",
        node_names=[h.name for h in reversed(servers[1:])],
    )
if host in servers and host.name != first_name:
    k3s.purged(name="Remove k3s from the server")
if host.name == first_name:
    k3s.purged(name="Remove k3s from the first server")
    k3s.kubeconfig(
        name=f"Remove context {k3s_settings.k3s_kubeconfig_context} from {k3s_settings.k3s_kubeconfig}",
        dest=k3s_settings.k3s_kubeconfig,
        context=k3s_settings.k3s_kubeconfig_context,
        server_url=server_url(k3s_settings.vip or "127.0.0.1"),
        present=False,
    )
if host in servers or host in agents:
    longhorn.modules(name="Remove the Longhorn modules-load file", modules=["iscsi_tcp", "dm_crypt"], present=False)
    longhorn.multipath(name="Remove the Longhorn multipathd blacklist line", present=False)
    # A new cluster may get another token: the fingerprint of the one removed must not refuse it.
    secrets.fingerprints(name="Forget the fingerprint of the k3s token (k3s is removed)", secrets=["k3s_token"], present=False)
