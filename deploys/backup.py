"""
Layer 5: backups with restic (homecloud/layers/backup.py).

    pyinfra -y inventories/pi.py deploys/backup.py

- per node with backup_enabled: restic, the passphrase (0600, from the controller's secret
  store), the wrapper /usr/local/lib/homecloud/homecloud-backup and its config, the units
  homecloud-backup.service/.timer (run, forget --prune) and homecloud-backup-check.service/.timer
  (restic check --read-data-subset);
- SFTP targets: a per-node SSH key made on the node, the target's host key pinned; on a target
  node of the inventory, a restricted SFTP account (chroot, internal-sftp, `restrict` keys).

Each node's last successful backup per target:

    pyinfra inventories/pi.py fact facts.backup.BackupStatus

Restores: deploys/restore.py.
"""

from pyinfra import host, state

from homecloud.layers import backup
from homecloud.fingerprints import check_secrets
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)
backup.apply(state, host)
