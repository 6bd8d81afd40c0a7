"""
The decentralized NAS (dnas) on the hosts of the `dnas` group: one data folder per node
(`dnas_path`, optionally on its own disk), kept in sync between the nodes by Syncthing and
served on the LAN by Samba and NFS.

    pyinfra -y inventories/pi.py deploys/dnas.py

In order, on each dnas node:

1. the data disk (`dnas_device`): its filesystem (a blank disk, named by `dnas_blank_device`,
   is formatted only when `dnas_format` asks and nothing at all is found on it; a disk that
   holds anything stops the run with the reason), a systemd mount unit at `dnas_path`, and
   drop-ins that make Syncthing, Samba and NFS start only with the disk mounted (never into
   the empty folder);
2. the dnas user and group with fixed ids (`dnas_uid`/`dnas_gid`), owner of every file;
3. Syncthing as `syncthing@<dnas_user>` (Debian's package or Syncthing's own apt repository),
   its GUI on `syncthing_gui_address`, no default folder, every dnas node peered with every
   other one (device IDs read from the other nodes while the deploy runs), the folders of
   `syncthing_folders` shared among them and with the devices of `syncthing_devices`;
4. Samba and NFS (the samba and nfs layers, called with the folders made here) over the
   same folder.

Hosts outside the `dnas` group are left alone. The layer is homecloud/layers/dnas.py; this
file validates the inventory and runs it.
"""

from pyinfra import host, state

from homecloud.layers import dnas
from homecloud.fingerprints import check_secrets
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)
dnas.apply(state, host)
