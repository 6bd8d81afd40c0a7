"""
NFS on the dnas nodes: the exports of `nfs_exports` (folders of dnas_path), NFSv3 and NFSv4,
every access squashed to the dnas user, served by the kernel server (`nfs_backend = "kernel"`)
or by the userspace nfs-ganesha (`"ganesha"`, for kernels without nfsd).

    pyinfra -y inventories/home.py deploys/nfs.py

The dnas layer calls it after it created the dnas user and the data folder; it is also safe
on its own (this file): it creates the dnas user (fixed uid/gid) only when absent and the exported
folders with the dnas owner.

The layer is homecloud/layers/nfs.py; this file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.layers import nfs
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
nfs.apply(state, host)
