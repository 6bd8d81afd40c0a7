"""
Layer 7: contacts and calendars as files between peers (homecloud/layers/davsync.py).

    pyinfra -y inventories/pi.py deploys/davsync.py

On dav_sync_node (a dnas node): vdirsyncer pairs each user of dav_sync_users with their address
books and calendars on the DAV server (Nextcloud unless dav_sync_url says otherwise), as
.vcf/.ics files in a Syncthing-shared dnas folder, every dav_sync_interval (a systemd timer, as
the dnas owner). On the other dnas nodes, nothing of it (removed if it was there).
"""

from pyinfra import host, state

from homecloud.fingerprints import check_secrets
from homecloud.layers import davsync
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)
davsync.apply(state, host)
