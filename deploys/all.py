"""
The whole homecloud: every layer in order, on the hosts of the inventory.

    pyinfra -y inventories/pi.py deploys/all.py

Each layer (homecloud/layers/<layer>.py) is also a deploy of its own (deploys/base.py,
deploys/keepalived.py, ...). The inventory is validated first: bad data stops the run before
any host changes.
"""

from pyinfra import host, state

from homecloud.layers import backup, base, davsync, dnas, hardening, k3s, keepalived, longhorn, platform, services
from homecloud.fingerprints import check_secrets
from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order
from homecloud.model import check_state

tcp_nodelay(state)  # one SSH round trip costs ~6 ms instead of ~45 ms (homecloud/connections.py)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)

# One layer per line, in order: pyinfra orders operations by the line numbers of the calls
# that queued them.
base.apply(state, host)  # host names, swap, time, kernel modules, sysctls, Raspberry Pi flags
hardening.apply(state, host)  # sshd, host firewall, sysctls, security updates
keepalived.apply(state, host)  # the virtual IP on keepalived_group
k3s.apply(state, host)  # k3s servers and agents
longhorn.apply(state, host)  # Longhorn's host prerequisites
dnas.apply(state, host)  # the NAS: disk, owner, Syncthing, then Samba and NFS
platform.apply(state, host)  # the Kubernetes add-ons, applied by k3s (Traefik, Longhorn)
services.apply(state, host)  # Nextcloud's manifest on the k3s servers (after the dnas: its NFS exports)
davsync.apply(state, host)  # contacts and calendars <-> .vcf/.ics files in a Syncthing folder (vdirsyncer)
backup.apply(state, host)  # restic backups of each node; the SFTP accounts on target nodes
