"""
The whole homecloud: every layer in order, on the hosts of the inventory.

    pyinfra -y inventories/pi.py deploys/all.py

Each layer is also a deploy of its own (deploys/base.py, deploys/keepalived.py, ...), and
each starts by validating the whole inventory: bad data stops the run before any host changes.
"""

from pathlib import Path

from pyinfra import local, state

from homecloud.model import check_state

check_state(state)

HERE = Path(__file__).resolve().parent

for layer in ("base", "keepalived", "k3s", "longhorn", "dnas"):
    local.include(str(HERE / f"{layer}.py"))
