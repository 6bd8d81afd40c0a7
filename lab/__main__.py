"""
Command line of the local lab (run as root from the repository root):

    .venv/bin/python -m lab up [--nodes N] [--arm64]   # build/reuse the base, boot the nodes
    .venv/bin/python -m lab status                     # nodes, addresses, groups, sshd answers?
    .venv/bin/python -m lab ssh node1 [command ...]     # a shell (or a command) on a node
    .venv/bin/python -m lab reset [node ...]            # nodes back to a fresh base (default: all)
    .venv/bin/python -m lab down                        # remove everything of the instance

The instance is $HOMECLOUD_LAB (default `hc`); its subnet $HOMECLOUD_LAB_SUBNET (default a free
10.231.X.0/24 derived from the name). Then: `pyinfra -y inventories/lab.py deploys/all.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import core
from .util import LabError


def _status(instance: str) -> int:
    state = core.load_state(instance)
    if state is None:
        print(f"lab `{instance}` is not up")
        return 1
    print(f"lab `{instance}`: subnet {state['subnet']}  controller {state['controller_ip']} on {state['bridge']}  "
          f"vip {state['vip']}  apt proxy {state['proxy']}")
    print(f"ssh key {state['ssh_key']}   state {core.state_path(instance)}")
    bad = 0
    for node in state["nodes"]:
        running = core.node_running(state, node)
        sshd = running and core.ssh_ready(state, node)
        bad += not sshd
        disks = ", ".join(f"{d['role']}={d['device']}" + (f"({d['label']})" if d["label"] else "") for d in node["disks"])
        print(f"  {node['name']:7} {node['ip']:15} {node['arch']:6} {','.join(node['groups']):22} "
              f"{'running' if running else 'stopped':8} sshd {'ok' if sshd else 'DOWN':5} {disks}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="bring the lab up (idempotent: starts stopped nodes of a running lab)")
    p_up.add_argument("--nodes", type=int, default=core.DEFAULT_NODES, help="number of amd64 nodes (default 4)")
    p_up.add_argument("--arm64", action="store_true", help="add one arm64 node (qemu-user, slow)")
    sub.add_parser("down", help="remove the lab completely (safe to run twice)")
    sub.add_parser("status", help="show the nodes and whether sshd answers")
    p_ssh = sub.add_parser("ssh", help="ssh to a node as root")
    p_ssh.add_argument("node")
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    p_reset = sub.add_parser("reset", help="put nodes back to a fresh base (default: all)")
    p_reset.add_argument("nodes", nargs="*")
    args = parser.parse_args(argv)

    try:
        instance = core.instance_name()
        if args.cmd == "up":
            t0 = time.monotonic()
            state = core.up(instance, nodes=args.nodes, arm64=args.arm64)
            for arch, info in state.get("base", {}).items():
                print(f"base {arch}: {'cached' if info['cached'] else 'built'} in {info['seconds']} s")
            print(f"up: {time.monotonic() - t0:.1f} s")
            return _status(instance)
        if args.cmd == "down":
            seconds = core.down(instance)
            print(f"down: {seconds:.1f} s")
            return 0
        if args.cmd == "status":
            return _status(instance)
        if args.cmd == "ssh":
            state = core.require_state(instance)
            node = core.find_node(state, args.node)
            cmd = core._ssh_base(state) + (["-t"] if sys.stdin.isatty() and not args.command else []) + [f"root@{node['ip']}"]
            os.execvp(cmd[0], cmd + args.command)
        if args.cmd == "reset":
            seconds = core.reset(instance, args.nodes or None)
            print(f"reset: {seconds:.1f} s")
            return _status(instance)
    except LabError as e:
        print(f"lab: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
