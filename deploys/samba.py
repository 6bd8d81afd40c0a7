"""
Samba on the dnas nodes: the shares of `samba_shares` (folders of dnas_path), the users of
`samba_users`, every file written as the dnas user.

    pyinfra -y inventories/home.py deploys/samba.py

The dnas layer calls it after it created the dnas user and the data folder; it is also safe
on its own (this file): it creates the dnas user (fixed uid/gid) only when absent and the share
folders with the dnas owner.

The layer is homecloud/layers/samba.py; this file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.layers import samba
from homecloud.fingerprints import check_secrets
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)
samba.apply(state, host)
