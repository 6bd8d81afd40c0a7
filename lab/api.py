"""
The lab for tests. Module functions act on the instance named by $HOMECLOUD_LAB (default `hc`),
read from its state file on every call (several processes can share one lab); `Lab("name")`
gives the same methods for another instance (e.g. a scratch lab next to the session's).

    from lab import api
    api.up()                          # bring it up (no-op when up), returns the state dict
    for node in api.nodes(): ...      # {"name", "ip", "groups", "arch", "disks", "running", ...}
    api.run("node1", "systemctl is-active keepalived", check=False).returncode
    api.crash("node1"); api.start("node1")          # SIGKILL its init; boot it again
    api.poweroff("node2"); api.start("node2")       # clean shutdown; boot again
    api.cut_link("node3"); api.restore_link("node3")  # its cable pulled / plugged back
    api.console("node4", "systemctl start ssh")    # out-of-band (nsenter), works without sshd
    api.vip(), api.subnet(), api.controller_ip(), api.down()

A stopped or crashed node is gone from the network: its namespace and veth are removed (a VIP it
held disappears with it); its root filesystem (overlay) and data disks stay. `start` brings it
back with the same address, MAC, disks and files, and waits until sshd answers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import core
from .util import LabError

__all__ = [
    "Lab", "LabError", "LabCommandError", "nodes", "node", "run", "console", "crash", "poweroff", "start",
    "cut_link", "restore_link", "link_is_up", "is_running", "vip", "subnet", "prefix", "controller_ip",
    "interface", "ssh_key", "up", "down", "is_up", "state_dir", "instance",
]


class LabCommandError(subprocess.CalledProcessError):
    """A command on a node failed; str() shows the node, command, exit code and output."""

    def __init__(self, node: str, returncode: int, cmd: str, output: str, stderr: str):
        super().__init__(returncode, cmd, output, stderr)
        self.node = node

    def __str__(self) -> str:
        return (f"{self.node}: `{self.cmd}` exited {self.returncode}\n"
                f"--- stdout\n{self.output}\n--- stderr\n{self.stderr}").rstrip()


class Lab:
    """One lab instance (None: $HOMECLOUD_LAB at each call, default `hc`)."""

    def __init__(self, instance: str | None = None):
        self._instance = core.instance_name(instance) if instance else None

    @property
    def instance(self) -> str:
        return core.instance_name(self._instance)

    def state(self) -> dict:
        return core.require_state(self.instance)

    def _public(self, state: dict, n: dict) -> dict:
        return {
            "name": n["name"],
            "ip": n["ip"],
            "groups": list(n["groups"]),
            "arch": n["arch"],
            "disks": [dict(d) for d in n["disks"]],
            "interface": state.get("interface", core.NODE_INTERFACE),
            "veth": n["veth"],
            "netns": n["netns"],
            "running": core.node_running(state, n),
        }

    def nodes(self) -> list[dict]:
        """Every node: name, ip, groups, arch, disks (role, device, label, uuid, image, by_id,
        by_label, fstype, size_mib), interface, veth, netns, running."""
        state = self.state()
        return [self._public(state, n) for n in state["nodes"]]

    def node(self, name: str) -> dict:
        state = self.state()
        return self._public(state, core.find_node(state, name))

    def run(self, node: str, cmd: str, check: bool = True, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a shell command as root on a node over SSH; CompletedProcess with text output."""
        state = self.state()
        n = core.find_node(state, node)
        argv = core._ssh_base(state) + [f"root@{n['ip']}", cmd]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise LabCommandError(n["name"], proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def console(self, node: str, cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a shell command in a running node without SSH (nsenter into its namespaces), like a
        serial console: to repair a node whose sshd is down."""
        state = self.state()
        n = core.find_node(state, node)
        pids = core._nspawn_pids(Path(n["root"]))
        init = core.container_init_pid(pids[0]) if pids else None
        if not init:
            raise LabError(f"{n['name']} is not running")
        argv = ["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", "--", "/bin/sh", "-c", cmd]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise LabCommandError(n["name"], proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def _with_node(self, name: str, func) -> None:
        with core.instance_lock(self.instance):
            state = self.state()
            n = core.find_node(state, name)
            try:
                func(state, n)
            finally:
                core.save_state(state)

    def crash(self, node: str) -> None:
        """Crash the node: SIGKILL its init (no shutdown, nothing flushed); it leaves the network."""
        self._with_node(node, lambda s, n: core.stop_node(s, n, crash=True))

    def poweroff(self, node: str, timeout: float = 30) -> None:
        """Clean shutdown (systemd stops every service); then the node leaves the network."""
        self._with_node(node, lambda s, n: core.stop_node(s, n, crash=False, timeout=timeout))

    def start(self, node: str, timeout: float = core.SSH_TIMEOUT) -> None:
        """Boot a stopped node (same address, disks and files) and wait until sshd answers."""
        def go(state: dict, n: dict) -> None:
            core.start_node(state, n)
            core.save_state(state)
            core.wait_ssh(state, [n], timeout)

        self._with_node(node, go)

    def is_running(self, node: str) -> bool:
        state = self.state()
        return core.node_running(state, core.find_node(state, node))

    def cut_link(self, node: str) -> None:
        """Pull the node's cable: its veth on the bridge goes down (the node sees NO-CARRIER)."""
        core.sh(["ip", "link", "set", core.find_node(self.state(), node)["veth"], "down"])

    def restore_link(self, node: str) -> None:
        """Plug the node's cable back."""
        core.sh(["ip", "link", "set", core.find_node(self.state(), node)["veth"], "up"])

    def link_is_up(self, node: str) -> bool:
        veth = core.find_node(self.state(), node)["veth"]
        try:
            return Path(f"/sys/class/net/{veth}/operstate").read_text().strip().lower() == "up"
        except OSError:
            return False

    def vip(self) -> str:
        """A free address on the lab subnet: the inventory's VIP."""
        return self.state()["vip"]

    def subnet(self) -> str:
        return self.state()["subnet"]

    def prefix(self) -> int:
        return int(self.state()["prefix"])

    def controller_ip(self) -> str:
        """The host's address on the lab bridge (the apt proxy listens there, port 3142)."""
        return self.state()["controller_ip"]

    def interface(self) -> str:
        """The nodes' interface name (host0)."""
        return self.state().get("interface", core.NODE_INTERFACE)

    def ssh_key(self) -> str:
        return self.state()["ssh_key"]

    def up(self, nodes: int = core.DEFAULT_NODES, arm64: bool = False) -> dict:
        """Bring the lab up, or start its stopped nodes when it is up already. Returns the state."""
        return core.up(self.instance, nodes=nodes, arm64=arm64)

    def down(self) -> float:
        """Remove the lab completely (safe twice); returns the seconds it took."""
        return core.down(self.instance)

    def reset(self, names: list[str] | None = None) -> float:
        """Nodes (default all) back to a fresh base with fresh disks; returns seconds."""
        return core.reset(self.instance, names)

    def is_up(self) -> bool:
        state = core.load_state(self.instance)
        return state is not None and Path(f"/sys/class/net/{state['bridge']}").exists()

    def state_dir(self) -> Path:
        return core.state_dir(self.instance)


_default = Lab()


def instance() -> str:
    return _default.instance


nodes = _default.nodes
node = _default.node
run = _default.run
console = _default.console
crash = _default.crash
poweroff = _default.poweroff
start = _default.start
is_running = _default.is_running
cut_link = _default.cut_link
restore_link = _default.restore_link
link_is_up = _default.link_is_up
vip = _default.vip
subnet = _default.subnet
prefix = _default.prefix
controller_ip = _default.controller_ip
interface = _default.interface
ssh_key = _default.ssh_key
up = _default.up
down = _default.down
reset = _default.reset
is_up = _default.is_up
state_dir = _default.state_dir
