"""
The local lab: systemd-nspawn nodes (Debian 12, real systemd + sshd) on a Linux bridge.

Layout of one instance (``HOMECLOUD_LAB``, default ``hc``; names below for ``hc``):

- bridge ``hc-br`` in the host network namespace, with the controller address (the subnet's
  first address) so pyinfra, ssh and pytest work from the host shell; IPv4 forwarding is
  switched off on the bridge and IPv6 disabled on it: nothing from the lab is ever routed;
- per node a network namespace ``hc-node1`` holding ``host0`` (the node's address, no default
  route, no DNS) and a veth ``hc-node1`` on the bridge; the namespace and its veth exist only
  while the node runs (a stopped or crashed node is gone from the network, VIP included);
- per node an overlay root (lower: the cached base rootfs, upper: the node's own changes), its
  own machine-id, SSH host keys and hostname, booted with
  ``systemd-nspawn --register=no --keep-unit --boot --network-namespace-path=... --private-network``
  from a small boot wrapper in the node's own cgroups (``/sys/fs/cgroup/{systemd,unified}/
  homecloud-lab/hc-node1``): a node that reboots itself boots again, one that powers itself
  off leaves the network;
- host firewall table ``inet homecloud_lab_hc`` (nftables): from the bridge the host accepts
  only the apt proxy port, ping and replies; nothing is routed to or from the lab;
- data disks: ext4 image files on loop devices bound into the dnas nodes, with the
  ``/dev/disk/by-*`` links udev would make (udev does not run in containers);
- the apt proxy (see `lab.proxy`): the only way out of the lab.

State: ``/var/lib/homecloud-lab/<instance>/state.json`` (read by ``inventories/lab.py`` and
`lab.api`). ``down`` finds what to remove by name (processes, namespaces, links, mounts, loop
devices under the state folder), so it also cleans up after a crashed ``up`` and is safe twice.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
import zlib
from pathlib import Path

from . import base, proxy
from .util import (
    RUN_ROOT, STATE_ROOT, LabError, all_pids, check_tools, file_lock, log, pid_alive, proc_cmdline,
    proc_ppid, require_root, sh, wait_for,
)

INSTANCE_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
DEFAULT_NODES = 4
MAX_NODES = 20
NODE_INTERFACE = "host0"
# How long a booting node may take until sshd answers. A node boots in 1-5 s here; under load
# (several labs on 2 cores) a reboot once took longer than 90 s (test_storage), so: 180 s.
SSH_TIMEOUT = 180

DATA_LABEL = "homecloud-data"
SPARE_LABEL = "homecloud-spare"
SPARE_FILE = "KEEP-ME.txt"
SPARE_TEXT = "homecloud lab: this device already holds data; it must never be formatted.\n"
DISK_SIZES_MIB = {"data": 256, "spare": 64, "blank": 64}


# --- Naming and state ---------------------------------------------------------------------------


def instance_name(name: str | None = None) -> str:
    """The lab instance: `name`, else $HOMECLOUD_LAB, else "hc" (1-8 of a-z0-9, a letter first)."""
    name = name or os.environ.get("HOMECLOUD_LAB") or "hc"
    if not INSTANCE_RE.match(name):
        raise LabError(
            f"lab instance name `{name}` is invalid: use 1-8 lower-case letters/digits starting with a "
            "letter (it prefixes interface names, limited to 15 characters)"
        )
    return name


def state_dir(instance: str | None = None) -> Path:
    return STATE_ROOT / instance_name(instance)


def state_path(instance: str | None = None) -> Path:
    return state_dir(instance) / "state.json"


def load_state(instance: str | None = None) -> dict | None:
    """The instance's state (dict) or None when that lab is not up."""
    path = state_path(instance)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def save_state(state: dict) -> None:
    path = state_path(state["instance"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def require_state(instance: str | None = None) -> dict:
    state = load_state(instance)
    if state is None:
        raise LabError(f"lab `{instance_name(instance)}` is not up: run python -m lab up")
    return state


def bridge_name(instance: str) -> str:
    return f"{instance}-br"


def node_link(instance: str, node: str) -> str:
    """Name of the node's network namespace and of its veth on the bridge (<= 15 characters)."""
    return f"{instance}-{node}"


def instance_lock(instance: str):
    return file_lock(RUN_ROOT / f"{instance}.lock", f"lab instance {instance}")


# --- Who a lab belongs to ----------------------------------------------------------------------
#
# A deployed lab's nodes hold the secrets of the checkout that deployed it (.secrets/lab-<instance>.json
# there): another checkout cannot deploy onto it (homecloud refuses: "this controller does not hold
# the cluster's secrets"). So `up` records an owner - a random token in the state and in the
# checkout's .lab/<instance>.owner - and a test session takes a lock on the instance it uses for as
# long as it runs (the kernel drops it when the session dies, however it dies).

CHECKOUT = Path(__file__).resolve().parents[1]
SESSION_NAMES = ["hc", *(f"hc{i}" for i in range(2, 10))]


def owner_path(instance: str) -> Path:
    return CHECKOUT / ".lab" / f"{instance}.owner"


def _record_owner(state: dict) -> None:
    token = uuid.uuid4().hex
    path = owner_path(state["instance"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n", encoding="utf-8")
    state["owner"] = {"checkout": str(CHECKOUT), "token": token}


def owned_here(state: dict) -> bool:
    """True when this checkout brought the lab up (its .lab/<instance>.owner matches the state)."""
    owner = state.get("owner") or {}
    try:
        mine = owner_path(state["instance"]).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return False
    return bool(owner.get("token")) and owner["token"] == mine


def foreign_reason(state: dict | None) -> str | None:
    """Why this checkout must not use the lab of `state` (None: it may: not up, or up and ours)."""
    if state is None or not _link_exists(state["bridge"]) or owned_here(state):
        return None
    owner = (state.get("owner") or {}).get("checkout")
    by = f"checkout {owner}" if owner else "an older homecloud (no owner recorded)"
    if owner == str(CHECKOUT):
        by = f"another clone at this path ({owner}) whose .lab/{state['instance']}.owner is gone"
    return (f"lab `{state['instance']}` is up and was brought up by {by}: its nodes hold that "
            "checkout's secrets, so deploys from here would be refused")


def session_lock(instance: str) -> tuple[int | None, str]:
    """Take the test-session lock of `instance` without waiting: (fd to keep open, "") or
    (None, who holds it)."""
    path = RUN_ROOT / f"{instance}.session.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
        os.close(fd)
        return None, holder or "another process"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"test session pid {os.getpid()} from {CHECKOUT}\n".encode(), 0)
    return fd, ""


def claim_for_session(explicit: str | None) -> tuple[str, int, list[str]]:
    """The lab instance a test session of this checkout uses, with its session lock held:
    (name, lock fd, notes on the instances passed over). `explicit` ($HOMECLOUD_LAB) is used or
    refused with the reason; without it the first of hc, hc2 ... hc9 that no other session
    holds and that is not up for another checkout."""
    names = [instance_name(explicit)] if explicit else SESSION_NAMES
    notes = []
    for instance in names:
        fd, holder = session_lock(instance)
        if fd is None:
            notes.append(f"lab `{instance}` is in use by {holder}")
            continue
        reason = foreign_reason(load_state(instance))
        if reason is None:
            return instance, fd, notes
        os.close(fd)
        notes.append(f"{reason} (`HOMECLOUD_LAB={instance} python -m lab down` removes it)")
    fix = ("wait for it, or set HOMECLOUD_LAB to another name" if explicit
           else "remove the labs nobody uses with `HOMECLOUD_LAB=<name> python -m lab down`")
    raise LabError("no lab instance for this test session: " + "; ".join(notes) + f". Fix: {fix}")


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    out = sh(["ip", "-j", "-4", "addr"], check=False).stdout or "[]"
    for link in json.loads(out):
        for a in link.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    out = sh(["ip", "-j", "-4", "route"], check=False).stdout or "[]"
    for route in json.loads(out):
        dst = route.get("dst")
        if dst and dst != "default":
            nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
    if STATE_ROOT.is_dir():
        for other in STATE_ROOT.glob("*/state.json"):
            try:
                nets.append(ipaddress.ip_network(json.loads(other.read_text())["subnet"]))
            except Exception:
                pass
    return nets


def choose_subnet(instance: str) -> ipaddress.IPv4Network:
    """$HOMECLOUD_LAB_SUBNET, else a free 10.231.X.0/24 derived from the instance name."""
    wanted = os.environ.get("HOMECLOUD_LAB_SUBNET")
    used = _used_networks()
    if wanted:
        net = ipaddress.ip_network(wanted, strict=True)
        if not net.is_private or net.num_addresses < 64:
            raise LabError(f"HOMECLOUD_LAB_SUBNET={wanted}: use a private IPv4 network of /26 or larger")
        clash = [u for u in used if u.overlaps(net)]
        if clash:
            raise LabError(f"HOMECLOUD_LAB_SUBNET={wanted} overlaps {clash[0]} already in use on this host")
        return net
    start = zlib.crc32(instance.encode()) % 250
    for i in range(250):
        net = ipaddress.ip_network(f"10.231.{(start + i) % 250 + 1}.0/24")
        if not any(u.overlaps(net) for u in used):
            return net
    raise LabError("no free 10.231.X.0/24 subnet left: set HOMECLOUD_LAB_SUBNET")


def plan_nodes(count: int, arm64: bool) -> list[dict]:
    """Node names, groups and disks: node1-3 servers (1 if fewer than 3 nodes), the rest agents;
    node1-2 dnas. The arm64 node (the boards homecloud is for are Raspberry Pis) is a k3s agent
    and a dnas node with its own data disk, so every host layer runs on arm64 userland too."""
    if not 1 <= count <= MAX_NODES:
        raise LabError(f"--nodes must be 1-{MAX_NODES}")
    servers = 3 if count >= 3 else 1
    nodes = []
    for i in range(1, count + 1):
        groups = ["k3s_servers" if i <= servers else "k3s_agents"]
        if i <= 2:
            groups.append("dnas")
        nodes.append({"name": f"node{i}", "index": i, "groups": groups, "arch": base.native_arch()})
    if arm64:
        i = count + 1
        nodes.append({"name": f"node{i}", "index": i, "groups": ["k3s_agents", "dnas"], "arch": "arm64"})
    for node in nodes:
        roles = []
        if "dnas" in node["groups"]:
            roles.append("data")
        if node["index"] == 1:
            roles += ["spare", "blank"]
        node["disk_roles"] = roles
    return nodes


# --- Processes --------------------------------------------------------------------------------


# Each node runs as a small sh loop (the "boot wrapper") running systemd-nspawn: it boots the
# node again when the node itself reboots (nspawn exit status 133), like a board does, and when
# the node powers itself off it takes the node off the network (removes its namespace and veth).
# `stop_node` and `down` kill the wrapper first and clean up themselves.
# First the wrapper moves itself into the node's own cgroups (see node_cgroups).
BOOT_LOOP = ('for cg in $HC_LAB_CGROUPS; do echo $$ > "$cg/cgroup.procs" || exit 1; done; '
             'while :; do "$@"; rc=$?; [ "$rc" -eq 133 ] || break; done; '
             'ip netns del "$HC_LAB_NETNS"; ip link del "$HC_LAB_VETH"; exit "$rc"')
REBOOT_STATUS = 133
# The cgroup hierarchies systemd uses to track processes (cgroup v1 "name=systemd" and the
# unified v2 one of a hybrid host). nspawn --keep-unit puts a container's cgroups ("payload",
# "supervisor") below nspawn's own cgroup: without a cgroup per node, every node's systemd
# would share one tree (/payload/system.slice/...), and a unit stopping in one node would wait
# for the processes of the same unit in the others.
CGROUP_TREES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
CGROUP_PARENT = "homecloud-lab"


def node_cgroups(node: dict) -> list[Path]:
    return [Path(tree) / CGROUP_PARENT / node["veth"] for tree in CGROUP_TREES if Path(tree, "cgroup.procs").exists()]


def remove_cgroups(paths) -> None:
    """rmdir cgroup folders bottom-up (only empty ones can go; busy ones are left)."""
    for top in paths:
        top = Path(top)
        if not top.is_dir():
            continue
        for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass


def _lab_procs(match) -> tuple[list[int], list[int]]:
    """(boot wrapper pids, systemd-nspawn pids) whose arguments satisfy `match(arg)`."""
    wrappers, nspawns = [], []
    for pid in all_pids():
        cmd = proc_cmdline(pid)
        if not cmd or not any(match(a) for a in cmd) or not pid_alive(pid):
            continue
        if cmd[0].endswith("systemd-nspawn"):
            nspawns.append(pid)
        elif cmd[:3] == ["sh", "-c", BOOT_LOOP]:
            wrappers.append(pid)
    return wrappers, nspawns


def _node_procs(root: Path) -> tuple[list[int], list[int]]:
    marker = f"--directory={root}"
    return _lab_procs(lambda a: a == marker)


def _nspawn_pids(root: Path) -> list[int]:
    return _node_procs(root)[1]


def _instance_procs(instance: str) -> tuple[list[int], list[int]]:
    prefix = f"--directory={state_dir(instance)}/nodes/"
    return _lab_procs(lambda a: a.startswith(prefix))


def _instance_nspawn_pids(instance: str) -> list[int]:
    wrappers, nspawns = _instance_procs(instance)
    return wrappers + nspawns


def container_init_pid(nspawn_pid: int) -> int | None:
    """The container's PID 1 (as seen from the host): a child of nspawn in a new PID namespace."""
    for pid in all_pids():
        if proc_ppid(pid) != nspawn_pid or not pid_alive(pid):
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1":
            return pid
    return None


def _kill_and_wait(pids: list[int], sig: int, timeout: float) -> bool:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return wait_for(lambda: not any(pid_alive(p) for p in pids), timeout)


# --- Network ----------------------------------------------------------------------------------


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _netns_list() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _sysctl(path: str, value: str) -> None:
    try:
        Path("/proc/sys", path).write_text(value)
    except OSError as e:
        log(f"warning: cannot set {path}={value}: {e}")


def create_bridge(state: dict) -> None:
    br = state["bridge"]
    if not _link_exists(br):
        sh(["ip", "link", "add", "name", br, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
    # Nothing is ever routed from or to the lab; no IPv6 on the controller side.
    _sysctl(f"net/ipv4/conf/{br}/forwarding", "0")
    _sysctl(f"net/ipv6/conf/{br}/disable_ipv6", "1")
    # VRRP multicast must reach every node without IGMP joins.
    Path(f"/sys/class/net/{br}/bridge/multicast_snooping").write_text("0")
    cidr = f"{state['controller_ip']}/{state['prefix']}"
    sh(["ip", "addr", "replace", cidr, "dev", br])
    sh(["ip", "link", "set", br, "up"])
    create_firewall(state)


def node_mac(instance: str, node: str, side: int) -> str:
    """A stable, locally administered MAC per node (like a board's NIC): a node that comes back
    after a crash keeps its MAC, so the peers' and the controller's ARP entries stay valid."""
    digest = zlib.crc32(f"{instance}/{node}/{side}".encode()).to_bytes(4, "big")
    return "02:%02x:" % (0x4C + side) + ":".join(f"{b:02x}" for b in digest)


def firewall_table(instance: str) -> str:
    return f"homecloud_lab_{instance}"


def create_firewall(state: dict) -> None:
    """Host-side nftables table of the instance: from the lab bridge the host accepts only the
    apt proxy port, ping and replies to its own connections (ssh, smbclient, NFS client ...),
    and nothing is routed between the lab and any other interface. No NAT anywhere."""
    if shutil.which("nft") is None:
        log("warning: nft (package nftables) is missing: nodes can reach the host's own services "
            "on the controller address (they still cannot leave the lab: no route, no forwarding)")
        return
    br, table = state["bridge"], firewall_table(state["instance"])
    rules = f"""
table inet {table} {{
  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname "{br}" ct state established,related accept
    iifname "{br}" ip daddr {state['controller_ip']} tcp dport {proxy.NODE_PROXY_PORT} accept
    iifname "{br}" icmp type {{ echo-request, destination-unreachable, time-exceeded }} accept
    iifname "{br}" drop
  }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    iifname "{br}" oifname != "{br}" drop
    oifname "{br}" iifname != "{br}" drop
  }}
}}
"""
    delete_firewall(state["instance"])
    sh(["nft", "-f", "-"], input=rules)


def delete_firewall(instance: str) -> None:
    if shutil.which("nft") is None:
        return
    table = firewall_table(instance)
    if sh(["nft", "list", "table", "inet", table], check=False).returncode == 0:
        sh(["nft", "delete", "table", "inet", table], check=False)


def create_node_net(state: dict, node: dict) -> None:
    ns = node["netns"]
    link = node["veth"]
    if ns not in _netns_list():
        sh(["ip", "netns", "add", ns])
    if not _link_exists(link):
        sh(["ip", "link", "add", link, "address", node_mac(state["instance"], node["name"], 0), "type", "veth",
            "peer", "name", NODE_INTERFACE, "address", node_mac(state["instance"], node["name"], 1), "netns", ns])
    _sysctl(f"net/ipv6/conf/{link}/disable_ipv6", "1")
    _sysctl(f"net/ipv4/conf/{link}/forwarding", "0")
    sh(["ip", "link", "set", link, "master", state["bridge"], "up"])
    sh(["ip", "-n", ns, "addr", "replace", f"{node['ip']}/{state['prefix']}", "dev", NODE_INTERFACE])
    sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    sh(["ip", "-n", ns, "link", "set", NODE_INTERFACE, "up"])


def delete_node_net(node: dict) -> None:
    if node["netns"] in _netns_list():
        sh(["ip", "netns", "del", node["netns"]], check=False)
    if _link_exists(node["veth"]):
        sh(["ip", "link", "del", node["veth"]], check=False)


# --- Disks ------------------------------------------------------------------------------------


def _losetup_list() -> list[dict]:
    out = sh(["losetup", "-J", "--list"], check=False).stdout.strip()
    return json.loads(out).get("loopdevices", []) if out else []


def create_disks(state: dict, node: dict) -> None:
    """Create and attach the node's disk images (see DISK_SIZES_MIB); record them in `node`."""
    folder = state_dir(state["instance"]) / "disks"
    folder.mkdir(parents=True, exist_ok=True)
    disks = []
    for role in node["disk_roles"]:
        image = folder / f"{node['name']}-{role}.img"
        image.unlink(missing_ok=True)
        with open(image, "wb") as f:
            f.truncate(DISK_SIZES_MIB[role] * 1024 * 1024)
        label = None
        if role == "data":
            label = DATA_LABEL
            sh(["mkfs.ext4", "-q", "-F", "-L", label, str(image)])
        elif role == "spare":
            label = SPARE_LABEL
            content = folder / f".{node['name']}-spare-content"
            shutil.rmtree(content, ignore_errors=True)
            content.mkdir()
            (content / SPARE_FILE).write_text(SPARE_TEXT)
            sh(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(content), str(image)])
            shutil.rmtree(content, ignore_errors=True)
        loop = sh(["losetup", "--find", "--show", str(image)]).stdout.strip()
        uuid_ = sh(["blkid", "-p", "-s", "UUID", "-o", "value", loop], check=False).stdout.strip() or None
        disks.append({
            "role": role,
            "image": str(image),
            "size_mib": DISK_SIZES_MIB[role],
            "device": loop,
            "label": label,
            "uuid": uuid_,
            "fstype": "ext4" if label else None,
            "by_id": f"/dev/disk/by-id/homecloud-lab-{role}",
            "by_label": f"/dev/disk/by-label/{label}" if label else None,
        })
    node["disks"] = disks


def detach_disks(node: dict) -> None:
    images = {d["image"] for d in node.get("disks", [])}
    for loop in _losetup_list():
        backing = (loop.get("back-file") or "").replace(" (deleted)", "")
        if backing in images:
            sh(["losetup", "-d", loop["name"]], check=False)
    for image in images:
        Path(image).unlink(missing_ok=True)


# --- Node filesystem --------------------------------------------------------------------------

DISK_LINKS_SCRIPT = r"""#!/bin/sh
# homecloud lab only. udev does not run in containers, so this makes the /dev/disk/by-id,
# by-label and by-uuid links udev would make for the disks the lab attached to this node
# (listed in /etc/homecloud-lab/disks). It runs at boot and, through
# homecloud-lab-disks.path, again whenever a disk is written and closed (e.g. after mkfs),
# like udev's inotify watch.
set -u
conf=/etc/homecloud-lab/disks
[ -r "$conf" ] || exit 0
mkdir -p /dev/disk/by-id /dev/disk/by-label /dev/disk/by-uuid
while read -r dev id; do
    [ -b "$dev" ] || continue
    target="../../${dev#/dev/}"
    ln -sfn "$target" "/dev/disk/by-id/$id"
    for link in /dev/disk/by-label/* /dev/disk/by-uuid/*; do
        [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ] && rm -f "$link"
    done
    label=$(blkid -p -s LABEL -o value "$dev" 2>/dev/null || true)
    fsuuid=$(blkid -p -s UUID -o value "$dev" 2>/dev/null || true)
    [ -n "$label" ] && ln -sfn "$target" "/dev/disk/by-label/$label"
    [ -n "$fsuuid" ] && ln -sfn "$target" "/dev/disk/by-uuid/$fsuuid"
done < "$conf"
exit 0
"""

DISK_LINKS_SERVICE = """[Unit]
Description=homecloud lab: /dev/disk/by-* links for the lab's disks (no udev in containers)
DefaultDependencies=no
Before=local-fs-pre.target
Wants=local-fs-pre.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/homecloud-lab-disk-links

[Install]
WantedBy=sysinit.target
"""


def provision_node(state: dict, node: dict) -> None:
    """Give a fresh node (its overlay is mounted at node['root']) its identity and the lab glue."""
    root = Path(node["root"])
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    sh(["ssh-keygen", "-q", "-A", "-f", str(root)])
    (root / "etc/hostname").write_text(node["name"] + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{node['name']}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    auth = ssh_dir / "authorized_keys"
    auth.write_text(Path(state["ssh_key"] + ".pub").read_text())
    os.chmod(auth, 0o600)
    # apt goes through the controller's proxy (the only way out); the mirror may be a pinned
    # snapshot whose Release files are past their Valid-Until date.
    (root / "etc/apt/apt.conf.d/00homecloud-lab-proxy").write_text(
        "// homecloud lab: the apt proxy on the controller is this node's only way out.\n"
        f'Acquire::http::Proxy "http://{state["controller_ip"]}:{proxy.NODE_PROXY_PORT}";\n'
        'Acquire::Check-Valid-Until "false";\n'
        # Defence in depth (the proxy itself answers every request completely, see
        # lab/aptproxy.py): one request at a time per connection, a short timeout and retries,
        # so a broken connection costs seconds, never a hung apt-get.
        'Acquire::http::Pipeline-Depth "0";\n'
        'Acquire::http::Timeout "30";\n'
        'Acquire::Retries "3";\n'
    )
    write_disk_glue(node)


def write_disk_glue(node: dict) -> None:
    root = Path(node["root"])
    glue = root / "etc/homecloud-lab"
    glue.mkdir(exist_ok=True)
    (glue / "disks").write_text("".join(f"{d['device']} homecloud-lab-{d['role']}\n" for d in node.get("disks", [])))
    (glue / "node.json").write_text(json.dumps({k: node[k] for k in ("name", "ip", "groups", "arch", "disks")}, indent=2))
    script = root / "usr/local/sbin/homecloud-lab-disk-links"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(DISK_LINKS_SCRIPT)
    os.chmod(script, 0o755)
    units = root / "etc/systemd/system"
    (units / "homecloud-lab-disks.service").write_text(DISK_LINKS_SERVICE)
    watches = "".join(f"PathChanged={d['device']}\n" for d in node.get("disks", []))
    path_unit = units / "homecloud-lab-disks.path"
    wants_sysinit = units / "sysinit.target.wants"
    wants_paths = units / "paths.target.wants"
    for folder in (wants_sysinit, wants_paths):
        folder.mkdir(exist_ok=True)
    link = wants_sysinit / "homecloud-lab-disks.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/homecloud-lab-disks.service")
    plink = wants_paths / "homecloud-lab-disks.path"
    if watches:
        path_unit.write_text(
            "[Unit]\nDescription=homecloud lab: refresh /dev/disk/by-* links when a lab disk is written\n"
            "DefaultDependencies=no\n\n[Path]\n" + watches + "Unit=homecloud-lab-disks.service\n\n"
            "[Install]\nWantedBy=paths.target\n"
        )
        if not plink.is_symlink():
            plink.symlink_to("/etc/systemd/system/homecloud-lab-disks.path")
    else:
        path_unit.unlink(missing_ok=True)
        plink.unlink(missing_ok=True)


def mount_overlay(state: dict, node: dict) -> None:
    folder = Path(node["dir"])
    for sub in ("upper", "work", "root"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(node["root"]):
        sh(["mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={node['base']},upperdir={folder / 'upper'},workdir={folder / 'work'}", node["root"]])


def umount_overlay(node: dict) -> None:
    if os.path.ismount(node["root"]):
        if sh(["umount", node["root"]], check=False).returncode != 0:
            sh(["umount", "-l", node["root"]], check=False)


# --- Node lifecycle ---------------------------------------------------------------------------


def _ssh_base(state: dict) -> list[str]:
    return [
        "ssh", "-i", state["ssh_key"], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3",
    ]


def ssh_ready(state: dict, node: dict, timeout: float = 5) -> bool:
    try:
        with socket.create_connection((node["ip"], 22), timeout=1):
            pass
    except OSError:
        return False
    try:
        proc = subprocess.run(_ssh_base(state) + [f"root@{node['ip']}", "true"], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def node_running(state: dict, node: dict) -> bool:
    """True while the node is booted, or rebooting (its boot wrapper is alive)."""
    wrappers, nspawns = _node_procs(Path(node["root"]))
    return bool(wrappers or nspawns)


def start_node(state: dict, node: dict) -> int:
    """Create the node's network and boot it (returns the nspawn pid; does not wait for sshd)."""
    wrappers, nspawns = _node_procs(Path(node["root"]))
    if wrappers or nspawns:
        return (wrappers + nspawns)[0]
    mount_overlay(state, node)
    create_node_net(state, node)
    log_file = state_dir(state["instance"]) / "logs" / f"{node['name']}.log"
    log_file.parent.mkdir(exist_ok=True)
    argv = [
        "systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
        f"--directory={node['root']}", f"--machine={node['veth']}", f"--hostname={node['name']}",
        f"--network-namespace-path=/run/netns/{node['netns']}", "--private-network",
        # nfs-ganesha needs open_by_handle_at (blocked by nspawn's default seccomp filter).
        "--system-call-filter=open_by_handle_at",
        "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only",
    ]
    if node["arch"] != base.native_arch():
        # qemu-user nodes do not honour systemd's SIGRTMIN+4 poweroff signal (see lab notes).
        argv.append("--kill-signal=SIGINT")
    for disk in node.get("disks", []):
        argv.append(f"--bind={disk['device']}")
    cgroups = node_cgroups(node)
    remove_cgroups(cgroups)  # leftovers of an earlier boot
    for cg in cgroups:
        cg.mkdir(parents=True, exist_ok=True)
    # Detached (its own session, parent: init) so it outlives the process that started it.
    wrapper = ["setsid", "sh", "-c", BOOT_LOOP, f"homecloud-lab-boot-{node['veth']}", *argv]
    proc = subprocess.run(
        ["sh", "-c", '"$@" </dev/null >>"$HC_LAB_LOG" 2>&1 & echo $!', "sh", *wrapper],
        capture_output=True, text=True, check=True,
        env={**os.environ, "HC_LAB_LOG": str(log_file), "HC_LAB_NETNS": node["netns"], "HC_LAB_VETH": node["veth"],
             "HC_LAB_CGROUPS": " ".join(str(c) for c in cgroups)},
    )
    pid = int(proc.stdout.strip())
    node["pid"] = pid
    # Until the wrapper has exec'd (setsid, then sh, then nspawn) the node's processes cannot be
    # recognised: a caller asking node_running() in that instant would take a booting node for a
    # stopped one. Return only once nspawn runs.
    if not wait_for(lambda: bool(_nspawn_pids(Path(node["root"]))), 30, 0.05):
        tail = log_file.read_text(errors="replace").splitlines()[-20:] if log_file.exists() else []
        raise LabError(f"{node['name']}: systemd-nspawn did not start (see {log_file})\n" + "\n".join(tail))
    return pid


def wait_ssh(state: dict, nodes: list[dict], timeout: float = SSH_TIMEOUT) -> None:
    """Wait until sshd answers on every node (in parallel); LabError naming the ones that do not.

    A node whose sshd has not answered after half the time is diagnosed (the findings go to the
    log and into the error) and booted once more: CI once saw a node whose ssh.service was up
    while the controller's `ssh true` failed for minutes, and the cause must be readable from
    the run's output even after `lab down` removed the logs."""
    failed: list[str] = []
    findings: list[str] = []

    def answered(node: dict, seconds: float) -> bool:
        return wait_for(lambda: ssh_ready(state, node) or not node_running(state, node), seconds, 0.3) and node_running(state, node)

    def one(node: dict) -> None:
        if answered(node, timeout / 2):
            return
        report = diagnose_node(state, node)
        log(f"{node['name']}: sshd did not answer within {timeout / 2:.0f} s; booting it once more. Findings:\n{report}")
        findings.append(f"\n--- {node['name']} after {timeout / 2:.0f} s\n{report}")
        stop_node(state, node)
        start_node(state, node)
        if not answered(node, timeout / 2):
            failed.append(node["name"])
            findings.append(f"\n--- {node['name']} after the second boot\n{diagnose_node(state, node)}")

    threads = [threading.Thread(target=one, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        logs = state_dir(state["instance"]) / "logs"
        raise LabError(f"sshd did not answer on {', '.join(sorted(failed))} within {timeout:.0f} s, booted twice "
                       f"(see {logs}){''.join(findings)}")


def diagnose_node(state: dict, node: dict) -> str:
    """What the controller and the node itself say about a node that does not answer ssh: the
    TCP connect, the controller's neighbour entry and veth, the node's address, and inside the
    node (nsenter) systemd's state, ssh.service and the listening sockets."""
    out: list[str] = []

    def run(title: str, argv: list[str]) -> None:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (proc.stdout + proc.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            text = f"({type(e).__name__}: {e})"
        out.append(f"$ {title}\n{text}")

    try:
        with socket.create_connection((node["ip"], 22), timeout=3):
            tcp = "connected"
    except OSError as e:
        tcp = f"{type(e).__name__}: {e}"
    out.append(f"tcp {node['ip']}:22 from the controller: {tcp}")
    run("ip neigh (controller)", ["ip", "neigh", "show", node["ip"]])
    run("ip link (node's veth)", ["ip", "-br", "link", "show", node["veth"]])
    run("ip addr (node)", ["ip", "-n", node["netns"], "-br", "addr"])
    pids = _nspawn_pids(Path(node["root"]))
    init = container_init_pid(pids[0]) if pids else None
    if init is None:
        out.append(f"no container init (nspawn pids {pids})")
        console = state_dir(state["instance"]) / "logs" / f"{node['name']}.log"
        if console.exists():
            tail = console.read_text(errors="replace").splitlines()[-20:]
            out.append(f"$ tail {console}\n" + "\n".join(tail))
    else:
        enter = ["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", "--"]
        run("systemctl is-system-running", enter + ["systemctl", "is-system-running"])
        run("systemctl list-jobs", enter + ["systemctl", "list-jobs", "--no-pager"])
        run("systemctl status ssh", enter + ["systemctl", "status", "--no-pager", "-n", "15", "ssh.service"])
        run("ss -tlnp", enter + ["ss", "-tlnp"])
    return "\n".join(out)


def stop_node(state: dict, node: dict, crash: bool = False, timeout: float = 30) -> None:
    """Power the node off cleanly (SIGTERM to nspawn), or crash it (SIGKILL its init); then its
    network namespace and veth are removed, so it is gone from the network like a dead board."""
    wrappers, pids = _node_procs(Path(node["root"]))
    # First the boot wrapper, so that nothing boots the node again.
    _kill_and_wait(wrappers, signal.SIGKILL, 5)
    if crash:
        for pid in pids:
            init = container_init_pid(pid)
            if init:
                os.kill(init, signal.SIGKILL)
        if not wait_for(lambda: not any(pid_alive(p) for p in pids), 10):
            _kill_and_wait(pids, signal.SIGKILL, 5)
    elif pids:
        if not _kill_and_wait(pids, signal.SIGTERM, timeout):
            log(f"{node['name']}: no clean poweroff within {timeout:.0f} s; killing it")
            for pid in pids:
                init = container_init_pid(pid)
                if init:
                    os.kill(init, signal.SIGKILL)
            _kill_and_wait(pids, signal.SIGKILL, 5)
    delete_node_net(node)
    remove_cgroups(node_cgroups(node))
    node["pid"] = None


# --- Instance lifecycle -----------------------------------------------------------------------


def _ensure_ssh_key(folder: Path) -> str:
    key = folder / "id_ed25519"
    if not key.exists():
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"homecloud-lab-{folder.name}", "-f", str(key)])
    return str(key)


def up(instance: str | None = None, nodes: int = DEFAULT_NODES, arm64: bool = False) -> dict:
    """Bring the lab up (or start the stopped nodes of a lab that is up); returns its state."""
    require_root()
    check_tools()
    _ensure_inotify_instances()
    instance = instance_name(instance)
    t0 = time.monotonic()
    with instance_lock(instance):
        state = load_state(instance)
        reason = foreign_reason(state)
        if reason:
            raise LabError(f"{reason}. Fix: deploy and test from that checkout, or `HOMECLOUD_LAB={instance} "
                           "python -m lab down` first, or use another instance (HOMECLOUD_LAB=<name>)")
        if state is not None and _link_exists(state["bridge"]):
            wanted = len(plan_nodes(nodes, arm64))
            if wanted != len(state["nodes"]):
                log(f"note: lab `{instance}` is up with {len(state['nodes'])} nodes (not {wanted}); "
                    "run `python -m lab down` first to change that")
            return _resume(state, t0)
        if state is not None or _leftovers(instance):
            log(f"cleaning up leftovers of lab `{instance}`")
            _down(instance)
        try:
            return _fresh_up(instance, nodes, arm64, t0)
        except BaseException as e:
            tails = _log_tails(instance)
            try:
                RUN_ROOT.mkdir(parents=True, exist_ok=True)
                (RUN_ROOT / f"{instance}-last-up-error.log").write_text(f"{time.ctime()}: {type(e).__name__}: {e}{tails}\n")
            except OSError:
                pass
            if os.environ.get("HOMECLOUD_LAB_KEEP"):
                log(f"up failed; leaving lab `{instance}` as it is (HOMECLOUD_LAB_KEEP): python -m lab down removes it")
            else:
                log(f"up failed; removing what was created of lab `{instance}`")
                _down(instance)
            if isinstance(e, LabError):
                raise LabError(f"{e}{tails}") from e
            raise


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_WANTED = 1024


def _ensure_inotify_instances() -> None:
    """Every node's systemd and udev use inotify instances, all counted against root on the host
    (the default limit, 128, runs out at about four labs of four nodes: nodes then fail to boot
    with "Too many open files"). Raise the limit when it is lower, and say so."""
    try:
        current = int(INOTIFY_INSTANCES.read_text().strip())
    except (OSError, ValueError):
        return
    if current < INOTIFY_WANTED:
        try:
            INOTIFY_INSTANCES.write_text(f"{INOTIFY_WANTED}\n")
            log(f"note: raised fs.inotify.max_user_instances from {current} to {INOTIFY_WANTED} (nspawn nodes need them)")
        except OSError as e:
            log(f"warning: fs.inotify.max_user_instances is {current} and could not be raised ({e}); nodes may fail to boot")


def _log_tails(instance: str, lines: int = 25) -> str:
    out = []
    for path in sorted((state_dir(instance) / "logs").glob("*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"\n--- {path.name} (last {len(text)} lines)\n" + "\n".join(text))
    return "".join(out)


def _fresh_up(instance: str, nodes: int, arm64: bool, t0: float) -> dict:
    """Create the instance from nothing (see `up`)."""
    folder = state_dir(instance)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    plan = plan_nodes(nodes, arm64)
    arches = sorted({n["arch"] for n in plan})
    bases, base_info = {}, {}

    def ensure(arch: str) -> None:
        path, seconds, cached = base.ensure_base(arch, log_dir=folder / "logs")
        bases[arch] = str(path)
        base_info[arch] = {"seconds": round(seconds, 1), "cached": cached, "path": str(path)}
        log(f"base {arch}: {'cached' if cached else 'built'} ({seconds:.1f} s)")

    # The bases of several architectures build at the same time (an arm64 debootstrap under
    # qemu-user takes minutes; the amd64 one runs meanwhile, each through its own proxy).
    _parallel([lambda a=a: ensure(a) for a in arches])
    t_nodes = time.monotonic()
    net = choose_subnet(instance)
    hosts = list(net.hosts())
    state = {
        "instance": instance,
        "subnet": str(net),
        "prefix": net.prefixlen,
        "controller_ip": str(hosts[0]),
        "vip": str(hosts[199] if len(hosts) > 200 else hosts[-1]),
        "bridge": bridge_name(instance),
        "interface": NODE_INTERFACE,
        "ssh_key": _ensure_ssh_key(folder),
        "proxy": f"http://{hosts[0]}:{proxy.NODE_PROXY_PORT}",
        "base": base_info,
        "nodes": [],
        "timings": {},
    }
    _record_owner(state)
    for spec in plan:
        name = spec["name"]
        state["nodes"].append({
            **spec,
            "ip": str(hosts[9 + spec["index"]]),
            "netns": node_link(instance, name),
            "veth": node_link(instance, name),
            "dir": str(folder / "nodes" / name),
            "root": str(folder / "nodes" / name / "root"),
            "base": bases[spec["arch"]],
            "disks": [],
            "pid": None,
        })
    save_state(state)
    create_bridge(state)
    state["proxy_pid"] = proxy.start(instance, state["controller_ip"], folder / "logs" / "proxy.log")
    save_state(state)
    for node in state["nodes"]:
        create_disks(state, node)
        save_state(state)
    _parallel([lambda n=n: (mount_overlay(state, n), provision_node(state, n)) for n in state["nodes"]])
    for node in state["nodes"]:
        start_node(state, node)
    save_state(state)
    wait_ssh(state, state["nodes"])
    t_end = time.monotonic()
    state["timings"] = {"nodes_ready_seconds": round(t_end - t_nodes, 1), "up_seconds": round(t_end - t0, 1)}
    save_state(state)
    log(f"{len(state['nodes'])} nodes ready (sshd answers) in {t_end - t_nodes:.1f} s; up took {t_end - t0:.1f} s")
    return state


def _resume(state: dict, t0: float) -> dict:
    stopped = [n for n in state["nodes"] if not node_running(state, n)]
    create_firewall(state)
    if not proxy.pids(state["instance"]):
        state["proxy_pid"] = proxy.start(
            state["instance"], state["controller_ip"], state_dir(state["instance"]) / "logs" / "proxy.log")
    for node in stopped:
        start_node(state, node)
    save_state(state)
    if stopped:
        wait_ssh(state, stopped)
        log(f"started {', '.join(n['name'] for n in stopped)} in {time.monotonic() - t0:.1f} s")
    else:
        log(f"lab `{state['instance']}` is already up")
    return state


def _parallel(funcs) -> None:
    errors: list[BaseException] = []

    def wrap(f):
        try:
            f()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(f,)) for f in funcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _leftovers(instance: str) -> bool:
    return bool(
        state_dir(instance).exists()
        or _link_exists(bridge_name(instance))
        or _instance_nspawn_pids(instance)
        or any(re.fullmatch(rf"{instance}-node\d+", ns) for ns in _netns_list())
    )


def down(instance: str | None = None) -> float:
    """Remove everything of the instance (safe to run twice). Returns the seconds it took."""
    require_root()
    instance = instance_name(instance)
    t0 = time.monotonic()
    with instance_lock(instance):
        _down(instance)
    elapsed = time.monotonic() - t0
    return elapsed


def _down(instance: str) -> None:
    folder = state_dir(instance)
    state = load_state(instance)
    wrappers, pids = _instance_procs(instance)
    _kill_and_wait(wrappers, signal.SIGKILL, 5)
    if pids and not _kill_and_wait(pids, signal.SIGTERM, 20):
        for pid in pids:
            init = container_init_pid(pid)
            if init:
                os.kill(init, signal.SIGKILL)
        _kill_and_wait(pids, signal.SIGKILL, 5)
    proxy.stop(instance)
    # Mounts under the state folder (node overlays), deepest first.
    mounts = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point == str(folder) or point.startswith(str(folder) + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        if sh(["umount", point], check=False).returncode != 0:
            sh(["umount", "-l", point], check=False)
    for ns in _netns_list():
        if re.fullmatch(rf"{instance}-node\d+", ns):
            sh(["ip", "netns", "del", ns], check=False)
    for link in os.listdir("/sys/class/net"):
        if re.fullmatch(rf"{instance}-node\d+", link) or link == bridge_name(instance):
            sh(["ip", "link", "del", link], check=False)
    delete_firewall(instance)
    for tree in CGROUP_TREES:
        parent = Path(tree) / CGROUP_PARENT
        if parent.is_dir():
            remove_cgroups(p for p in parent.iterdir() if re.fullmatch(rf"{instance}-node\d+", p.name))
            try:
                parent.rmdir()  # only when no other instance uses it
            except OSError:
                pass
    prefix = str(folder) + "/"
    for loop in _losetup_list():
        if (loop.get("back-file") or "").startswith(prefix):
            sh(["losetup", "-d", loop["name"]], check=False)
    if state is not None and owned_here(state):
        owner_path(instance).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def reset(instance: str | None = None, names: list[str] | None = None) -> float:
    """Put nodes (default: all) back to the fresh base: new overlay, identity and disks."""
    require_root()
    instance = instance_name(instance)
    t0 = time.monotonic()
    with instance_lock(instance):
        state = require_state(instance)
        targets = [n for n in state["nodes"] if not names or n["name"] in names]
        unknown = set(names or []) - {n["name"] for n in state["nodes"]}
        if unknown:
            raise LabError(f"unknown node(s): {', '.join(sorted(unknown))}")
        _parallel([lambda n=n: stop_node(state, n) for n in targets])
        for node in targets:
            umount_overlay(node)
            detach_disks(node)
            shutil.rmtree(node["dir"], ignore_errors=True)
            create_disks(state, node)
        _parallel([lambda n=n: (mount_overlay(state, n), provision_node(state, n)) for n in targets])
        for node in targets:
            start_node(state, node)
        save_state(state)
        wait_ssh(state, targets)
        save_state(state)
    return time.monotonic() - t0


def find_node(state: dict, name: str) -> dict:
    for node in state["nodes"]:
        if node["name"] == name or node["ip"] == name:
            return node
    raise LabError(f"no node `{name}` in lab `{state['instance']}` (nodes: {', '.join(n['name'] for n in state['nodes'])})")
