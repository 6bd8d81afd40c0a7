"""
Layer 6: the services on k3s, Nextcloud first (homecloud/layers/services.py).

    pyinfra -y inventories/pi.py deploys/services.py

- The module kubernetes/services/nextcloud/ and an overlay written from the inventory's
  nextcloud_* keys (domain, sizes, storage class, the dnas folders and dump folder as NFS volumes,
  the secrets) are uploaded to /var/lib/homecloud/services (0700, files 0600) on every k3s server
  and built there with `k3s kubectl kustomize`: the controller needs no kubectl.
- Two manifests, 0600, in k3s's auto-deploy folder, written when the build changed:
  homecloud-nextcloud.yaml (Namespace + volume claims) and homecloud-nextcloud-app.yaml (the
  rest). Nextcloud off: the app manifest is emptied (k3s deletes the workloads), the volumes'
  manifest is kept, the staged tree removed.
- Needs the platform (Traefik's Middleware CRD, Longhorn's StorageClass) on the cluster, and the
  dnas' NFS exports the storages and dumps use (deploys/dnas.py).

The layer is homecloud/layers/services.py; this file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.fingerprints import check_secrets
from homecloud.layers import services
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)
services.apply(state, host)
