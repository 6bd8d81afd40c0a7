"""
Restore from a backup (homecloud/layers/backup.py), once per snapshot and destination:

    # into a new folder (default <dnas_path>/restored-<snapshot>): nothing existing is touched
    pyinfra -y inventories/pi.py deploys/restore.py --limit pi1 --data restore_snapshot=latest \
        --data restore_paths=/srv/dnas/data/photos --data restore_to=/srv/dnas/restored-photos

    # in place: missing and older files put back, files newer than the snapshot kept, nothing deleted
    pyinfra -y inventories/pi.py deploys/restore.py --limit pi1 --data restore_in_place=True

    # a replaced node (fresh disk, after deploys/all.py): data and the Syncthing identity back
    pyinfra -y inventories/pi.py deploys/restore.py --limit pi1 --data restore_node_replaced=True

`restore_target` picks the target (default the first); `homecloud-backup snapshots` on the node
lists the snapshots.
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
check_secrets(state)
backup.restore_apply(state, host)
