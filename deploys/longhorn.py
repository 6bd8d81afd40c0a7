"""
Layer 3: Longhorn's host prerequisites on every k3s server and agent with longhorn_enabled.

    pyinfra -y inventories/pi.py deploys/longhorn.py

open-iscsi (iscsid running), an NFSv4 client, cryptsetup + dmsetup, the iscsi_tcp and dm_crypt
modules (loaded when the kernel has them, persisted in /etc/modules-load.d), multipathd kept
off Longhorn's devices, the commands Longhorn calls on the host, and the data path on ext4 or
XFS (on its own disk when longhorn_device is set). The last operation checks all of it the way
`longhornctl check preflight` does and fails the host with the list of what is still wrong.

This only prepares the hosts: Longhorn itself is installed into the cluster (Helm chart or
manifest) by you. armv7 (armhf) boards cannot run Longhorn: they are skipped with a warning,
and the k3s layer labels them node.longhorn.io/create-default-disk=false.

The layer is homecloud/layers/longhorn.py; this file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.layers import longhorn
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
longhorn.apply(state, host)
