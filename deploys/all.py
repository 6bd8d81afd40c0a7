"""
The whole homecloud: every layer in order, on the hosts of the inventory.

    pyinfra -y inventories/pi.py deploys/all.py

Each layer is also a deploy of its own (deploys/base.py, deploys/keepalived.py, ...), and
each starts by validating the whole inventory: bad data stops the run before any host changes.
Then the secrets: a controller whose secrets differ from the cluster's stops before any change
(homecloud/fingerprints.py).
"""

from pathlib import Path

from pyinfra import local, state

from homecloud.fingerprints import check_secrets
from homecloud.model import check_state

check_state(state)
# This controller must hold the secrets the cluster has (no silent rotation): stop before any change.
check_secrets(state)

HERE = Path(__file__).resolve().parent

# One include per line: pyinfra orders operations by the line numbers of the calls that queued
# them, so includes from one loop line would give operations of different layers the same place.
local.include(str(HERE / "base.py"))
local.include(str(HERE / "keepalived.py"))
local.include(str(HERE / "k3s.py"))
local.include(str(HERE / "longhorn.py"))
local.include(str(HERE / "dnas.py"))
