"""
Layer 5: the Kubernetes platform on every k3s server (Traefik tuned, Longhorn with snapshots
and backups), applied by k3s's auto-deploy folder.

    pyinfra -y inventories/pi.py deploys/platform.py

The modules (kubernetes/platform/<addon>/) and an overlay from the inventory are uploaded to
/var/lib/homecloud/platform (root-only), built with `k3s kubectl kustomize` on each server and
written to /var/lib/rancher/k3s/server/manifests/homecloud-<addon>.yaml when the build changed.
`--dry` lists the manifests that would change. A disabled add-on's manifest becomes empty, and
k3s deletes what it created. The last operation waits for the install jobs and workloads.

The layer is homecloud/layers/platform.py; this file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.fingerprints import check_secrets
from homecloud.layers import platform
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
check_secrets(state)
platform.apply(state, host)
