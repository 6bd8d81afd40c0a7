"""
Layer 2: k3s, highly available with embedded etcd, pinned and upgradable, airgap-capable.

    pyinfra -y inventories/pi.py deploys/k3s.py

- k3s_servers: the first runs `cluster-init`, the others join https://<vip>:6443 one at a
  time; k3s_agents join through the VIP afterwards.
- The binary for each node's architecture is verified on the controller first (downloaded once
  into k3s_download_dir, or taken from k3s_airgap_dir). Without one, the deploy stops here,
  while pyinfra loads it - before any operation of any layer ran on any host.
- Bumping k3s_version uploads the new binary and restarts servers one by one (each must be
  Ready again before the next), then agents. A server that fails stops the upgrade.
- At the end the admin kubeconfig is merged into k3s_kubeconfig on the controller and the
  cluster is checked through the VIP (every node Ready, kube-system deployments available).

The layer is homecloud/layers/k3s.py; this file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.layers import k3s
from homecloud.fingerprints import check_secrets
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)
k3s.apply(state, host)
