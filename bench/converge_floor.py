"""
The first-converge floor (a pyinfra deploy file, run by bench/deploy.py; not part of homecloud).

What the first `deploys/all.py` on a fresh node cannot do with less: one `apt-get update` plus
one `apt-get install` of every package the real converge added to that node (read from the
node before and after it, so dependencies and recommends are the same set), through the same
apt proxy, and one file upload per file the converge uploaded. No fact is read.

The per-host plan comes from the JSON file $HOMECLOUD_BENCH_FLOOR_PLAN:
{"node1": {"packages": [...], "uploads": 12}, ...}.
"""

import json
import os
import shlex
from io import BytesIO

from pyinfra import host, state
from pyinfra.api import FileUploadCommand, StringCommand, operation

from homecloud.connections import tcp_nodelay
from homecloud.oporder import fast_op_order

# The same connections as a deploy's (deploys/*.py): the floor is not slowed by Nagle either.
tcp_nodelay(state)
fast_op_order()  # pyinfra's operation order without reading source files (homecloud/oporder.py)
plan = json.loads(open(os.environ["HOMECLOUD_BENCH_FLOOR_PLAN"], encoding="utf-8").read()).get(host.name, {})


@operation()
def install_at_once(packages: list[str]):
    """One apt-get update and one apt-get install of `packages`."""
    if not packages:
        host.noop("nothing to install")
        return
    yield StringCommand(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
        + " ".join(shlex.quote(p) for p in packages)
    )


@operation()
def upload_files(count: int):
    """`count` small file uploads, nothing else."""
    if count:
        yield StringCommand("mkdir -p /root/bench-floor")
    for i in range(count):
        yield FileUploadCommand(BytesIO(f"bench floor file {i}\n".encode()), f"/root/bench-floor/{i}")


install_at_once(name="floor: one apt-get install", packages=plan.get("packages", []))
upload_files(name="floor: one upload per managed file", count=plan.get("uploads", 0))
