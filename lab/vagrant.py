"""
The Vagrant lab: the homecloud cluster in real VMs, for users with a hypervisor (libvirt,
VirtualBox, or Parallels on Apple silicon). Unlike the local nspawn lab, k3s, Longhorn's iSCSI
and the kernel NFS server really run here.

    python -m lab.vagrant up        # create / start the VMs (Vagrantfile at the repo root)
    python -m lab.vagrant status
    pyinfra -y inventories/vagrant.py deploys/all.py
    python -m lab.vagrant destroy

The topology lives in lab/vagrant_topology.json, read by the Vagrantfile and by this module, and
the environment overrides HOMECLOUD_VAGRANT_NODES / _SUBNET / _ARCH / _BOX apply to both (see
the Vagrantfile). `inventory_groups()` builds the inventory of the running VMs with
python-vagrant (`vagrant status` + `vagrant ssh-config`); inventories/vagrant.py calls it.

The lab test fixtures (tests/lab/conftest.py, `--lab=vagrant`) use `available()`, `up()`,
`destroy()` and `INVENTORY`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from homecloud.model import REPO_ROOT, InventoryError

INVENTORY = "inventories/vagrant.py"
TOPOLOGY_FILE = Path(__file__).resolve().with_name("vagrant_topology.json")
# Providers the Vagrantfile configures, in the order they are tried when none is chosen.
PROVIDERS = ("libvirt", "virtualbox", "parallels")
PROVIDER_PLUGINS = {"libvirt": "vagrant-libvirt", "parallels": "vagrant-parallels"}
# Where `up()` records the guest interface carrying each node's private address.
INTERFACES_FILE = "homecloud-interfaces.json"
# The samba user of the lab (its password comes from .secrets/vagrant.json).
SAMBA_USER = "alice"


class LabNotUp(InventoryError):
    """The Vagrant lab's VMs are not (all) running, or Vagrant cannot be asked."""


# --- Topology ---------------------------------------------------------------------------------


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(name) or "").strip()
    return value or None


def host_arch(machine: str | None = None) -> str:
    """amd64 or arm64 for a machine name as platform.machine() / RbConfig host_cpu give it."""
    machine = (machine or platform.machine()).lower()
    if machine in ("amd64", "x86_64", "x64"):
        return "amd64"
    if machine in ("arm64", "aarch64"):
        return "arm64"
    raise InventoryError(f"HOMECLOUD_VAGRANT_ARCH={machine}: use amd64 or arm64")


def topology(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """
    The lab as the Vagrantfile builds it (same keys, same values: tests/test_vagrant.py checks),
    plus INVENTORY_ONLY_KEYS: `interface`, the box's private-network interface (None when the
    box's is unknown) and `data_disk_serial`.
    """
    env = os.environ if env is None else env
    topo = json.loads(TOPOLOGY_FILE.read_text(encoding="utf-8"))

    subnet = _env(env, "HOMECLOUD_VAGRANT_SUBNET") or topo["subnet"]
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError as e:
        raise InventoryError(f"HOMECLOUD_VAGRANT_SUBNET={subnet}: not an IPv4 network ({e})") from None
    if net.version != 4:
        raise InventoryError(f"HOMECLOUD_VAGRANT_SUBNET={subnet}: IPv4 only")

    count_text = _env(env, "HOMECLOUD_VAGRANT_NODES") or str(topo["node_count"])
    try:
        count = int(count_text)
    except ValueError:
        count = 0
    if not 1 <= count <= len(topo["nodes"]):
        raise InventoryError(f"HOMECLOUD_VAGRANT_NODES={count_text}: use 1 to {len(topo['nodes'])}")

    def address(host: int) -> str:
        if host < 1 or host >= net.num_addresses - 1:
            raise InventoryError(f"HOMECLOUD_VAGRANT_SUBNET={subnet}: too small for host .{host}")
        return str(net.network_address + host)

    wanted = _env(env, "HOMECLOUD_VAGRANT_ARCH")
    arch = host_arch(None if wanted is None or wanted.lower() == "auto" else wanted)
    nodes = []
    for node in topo["nodes"][:count]:
        server = "k3s_servers" in node["groups"]
        nodes.append(
            {
                "name": node["name"],
                "ip": address(node["host"]),
                "groups": list(node["groups"]),
                "memory_mb": topo["memory_mb"]["k3s_servers" if server else "k3s_agents"],
                "cpus": topo["cpus"],
                "data_disk_gb": topo["data_disk_gb"] if "dnas" in node["groups"] else None,
            }
        )
    box_override = _env(env, "HOMECLOUD_VAGRANT_BOX")
    return {
        "arch": arch,
        "box": box_override or topo["boxes"][arch]["box"],
        "subnet": str(net),
        "prefix": net.prefixlen,
        "netmask": str(net.netmask),
        "vip": address(topo["vip_host"]),
        "nodes": nodes,
        # A box of the user's choice: its interface names are unknown until `up()` asks.
        "interface": None if box_override else topo["boxes"][arch]["interface"],
        "data_disk_serial": topo["data_disk_serial"],
    }


# Keys of topology() that only the inventory uses (the Vagrantfile does not configure them).
INVENTORY_ONLY_KEYS = ("interface", "data_disk_serial")
# The link the Vagrantfile's provisioner makes for the blank disk on VirtualBox and Parallels.
DATA_DISK_LINK = "/dev/disk/by-id/homecloud-data-disk"


def blank_disk_path(topo: dict, provider: str | None) -> str:
    """The stable path of a dnas node's blank data disk, as the Vagrantfile names it."""
    if provider == "libvirt":
        return f"/dev/disk/by-id/virtio-{topo['data_disk_serial']}"  # the serial set on the disk
    return DATA_DISK_LINK


# --- Vagrant ----------------------------------------------------------------------------------


def _vagrant(quiet: bool = True):
    try:
        import vagrant  # python-vagrant
    except ImportError:
        raise InventoryError(
            "python-vagrant is not installed. Fix: pip install python-vagrant (it is in the test extra: pip install -e '.[test]')"
        ) from None
    return vagrant.Vagrant(str(REPO_ROOT), quiet_stdout=quiet, quiet_stderr=quiet)


def dotdir(env: Mapping[str, str] | None = None) -> Path:
    """Vagrant's machine folder (VAGRANT_DOTFILE_PATH, relative to the Vagrantfile's folder)."""
    env = os.environ if env is None else env
    return (REPO_ROOT / (env.get("VAGRANT_DOTFILE_PATH") or ".vagrant")).resolve()


def _machine_id(name: str, provider: str | None, env: Mapping[str, str] | None = None) -> str | None:
    if not provider:
        return None
    path = dotdir(env) / "machines" / name / provider / "id"
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def _run(argv: list[str], timeout: int = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _provider_problem(provider: str, plugins: set[str]) -> str | None:
    """Why `provider` cannot run VMs here, or None when it can."""
    plugin = PROVIDER_PLUGINS.get(provider)
    if plugin and plugin not in plugins:
        return f"{provider}: the {plugin} plugin is not installed (vagrant plugin install {plugin})"
    if provider == "libvirt":
        if not shutil.which("virsh"):
            return "libvirt: virsh not found (install libvirt-daemon-system and libvirt-clients)"
        uri = os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system")
        done = _run(["virsh", "-c", uri, "version"], timeout=20)
        if done is None or done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no answer"])[-1] if done else "no answer"
            return f"libvirt: cannot connect to {uri} ({detail})"
        if not os.path.exists("/dev/kvm"):
            return "libvirt: /dev/kvm is missing (no hardware virtualization; QEMU emulation is far too slow)"
        return None
    if provider == "virtualbox":
        done = _run(["VBoxManage", "--version"]) if shutil.which("VBoxManage") else None
        return None if done is not None and done.returncode == 0 else "virtualbox: VBoxManage not found or not working"
    if provider == "parallels":
        done = _run(["prlctl", "--version"]) if shutil.which("prlctl") else None
        return None if done is not None and done.returncode == 0 else "parallels: prlctl not found or not working"
    return f"{provider}: not a provider this Vagrantfile configures ({', '.join(PROVIDERS)})"


def _plugins() -> set[str]:
    try:
        return {plugin.name for plugin in _vagrant().plugin_list()}
    except (subprocess.CalledProcessError, RuntimeError, OSError):
        return set()


def provider() -> tuple[str | None, str]:
    """The provider to use (VAGRANT_DEFAULT_PROVIDER, else the first usable one) and why."""
    if not shutil.which("vagrant"):
        return None, "vagrant is not installed (Debian: apt install vagrant; else https://developer.hashicorp.com/vagrant/install)"
    plugins = _plugins()
    chosen = os.environ.get("VAGRANT_DEFAULT_PROVIDER")
    candidates = (chosen,) if chosen else PROVIDERS
    problems = []
    for name in candidates:
        problem = _provider_problem(name, plugins)
        if problem is None:
            return name, f"vagrant with the {name} provider"
        problems.append(problem)
    return None, "no usable Vagrant provider: " + "; ".join(problems)


def available() -> tuple[bool, str]:
    """(True, what will be used) when Vagrant and a usable provider are here, else (False, why)."""
    name, reason = provider()
    return name is not None, reason


def status(v=None) -> list:
    """python-vagrant Status(name, state, provider) of every machine of the Vagrantfile."""
    v = v or _vagrant()
    return v.status()


def up() -> None:
    """Create / start every VM of the topology, then record each node's lab interface."""
    name, reason = provider()
    if name is None:
        raise LabNotUp(f"cannot start the vagrant lab: {reason}")
    v = _vagrant(quiet=False)
    v.up(provider=name)
    record_interfaces(v)


def _created_nodes(env: Mapping[str, str] | None = None) -> int:
    """The highest N of a nodeN that Vagrant created (any provider), 0 when none."""
    machines = dotdir(env) / "machines"
    found = [0]
    for id_file in machines.glob("node*/*/id") if machines.is_dir() else []:
        suffix = id_file.parent.parent.name[len("node"):]
        if suffix.isdigit():
            found.append(int(suffix))
    return max(found)


def destroy() -> None:
    """
    Destroy every VM of the lab (with its data disk), also nodes created with a larger
    HOMECLOUD_VAGRANT_NODES than the current one (else they would be left running, unknown to
    the Vagrantfile).
    """
    env = dict(os.environ)
    created = _created_nodes(env)
    if created > len(topology(env)["nodes"]):
        env["HOMECLOUD_VAGRANT_NODES"] = str(created)
    v = _vagrant(quiet=False)
    v.env = env
    v.destroy()
    path = dotdir() / INTERFACES_FILE
    if path.exists():
        path.unlink()


def record_interfaces(v) -> dict[str, dict[str, str]]:
    """
    Ask each running node which interface carries its private address (box conventions differ:
    eth1 on Debian's boxes, enp0s* elsewhere) and record it with the machine id, so the inventory
    never uses the answer of a VM that was rebuilt since.
    """
    topo = topology()
    states = {s.name: s for s in v.status()}
    found: dict[str, dict[str, str]] = {}
    for node in topo["nodes"]:
        st = states.get(node["name"])
        if st is None or st.state != "running":
            continue
        output = v.ssh(vm_name=node["name"], command=f"ip -o -4 addr show to {node['ip']}/32")
        fields = output.split()
        if len(fields) < 2:
            raise LabNotUp(f"{node['name']}: no interface carries {node['ip']} (output: {output.strip()!r})")
        found[node["name"]] = {
            "id": _machine_id(node["name"], st.provider) or "",
            "interface": fields[1].split("@")[0],
        }
    path = dotdir() / INTERFACES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return found


# --- Inventory --------------------------------------------------------------------------------


def _ssh_sections(output: str) -> dict[str, str]:
    """Split `vagrant ssh-config a b ...` output into one `Host` section per machine."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        stripped = line.strip()
        if stripped.startswith("Host "):
            current = sections.setdefault(stripped.split(None, 1)[1].strip(), [])
        if current is not None:
            current.append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in sections.items()}


def _interface(node: dict, topo: dict, st, recorded: dict, env: Mapping[str, str]) -> str:
    override = _env(env, "HOMECLOUD_VAGRANT_INTERFACE")
    if override:
        return override
    entry = recorded.get(node["name"]) or {}
    if entry.get("interface") and entry.get("id") and entry.get("id") == _machine_id(node["name"], st.provider, env):
        return entry["interface"]
    if topo["interface"]:
        return topo["interface"]
    raise LabNotUp(
        f"{node['name']}: the private network's interface name of box {topo['box']} is not known. "
        "Fix: run `python -m lab.vagrant up` (it asks the VMs), or set HOMECLOUD_VAGRANT_INTERFACE"
    )


NO_PROVIDER_FIX = (
    "Fix: install a hypervisor Vagrant can drive: libvirt with the vagrant-libvirt plugin (Debian: apt install "
    "libvirt-daemon-system libvirt-clients vagrant-libvirt), or VirtualBox, or Parallels with vagrant-parallels; "
    "then run `python -m lab.vagrant up`"
)


def inventory_groups(
    v=None,
    env: Mapping[str, str] | None = None,
    secrets_dir: Path | None = None,
    provider_check: Callable[[], tuple[bool, str]] = available,
) -> dict[str, list]:
    """
    The inventory groups of the running lab: {"k3s_servers": [(name, data), ...], ...}. Each
    node's data is given once (in its first group), like inventories/pi.py. Raises LabNotUp
    when a node of the topology is not running: with what to install when no Vagrant provider
    is usable here (`provider_check`, asked only then), else with the command to run.
    """
    from homecloud.secrets import secret

    env = os.environ if env is None else env
    topo = topology(env)
    names = [node["name"] for node in topo["nodes"]]
    try:
        v = v or _vagrant()
        states = {s.name: s for s in v.status()}
        failure = None
    except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
        states, failure = {}, e
    down = [f"{n}: {states[n].state if n in states else 'not defined'}" for n in names if n not in states or states[n].state != "running"]
    if down:
        usable, why = provider_check()
        if not usable:
            raise LabNotUp(f"vagrant lab: {why}. {NO_PROVIDER_FIX}")
        if failure is not None:
            raise LabNotUp(f"vagrant lab: `vagrant status` failed ({failure}). Fix: check `vagrant status` in {REPO_ROOT}")
        raise LabNotUp(f"vagrant lab is not up ({', '.join(down)}). Fix: run `python -m lab.vagrant up`")
    try:
        sections = _ssh_sections(v._run_vagrant_command(["ssh-config", *names]))
    except subprocess.CalledProcessError as e:
        raise LabNotUp(f"vagrant lab: `vagrant ssh-config` failed ({e}). Fix: run `python -m lab.vagrant up`") from None

    interfaces_path = dotdir(env) / INTERFACES_FILE
    recorded = json.loads(interfaces_path.read_text(encoding="utf-8")) if interfaces_path.exists() else {}

    def store_secret(key: str, length: int) -> str:
        return secret(key, length=length, store="vagrant", directory=secrets_dir)

    # Cluster data as host data (group_data/all.py would override inline `all` data).
    cluster = {
        "_sudo": True,
        "ssh_known_hosts_file": "/dev/null",  # rebuilt VMs come back with new host keys
        "ssh_strict_host_key_checking": "off",
        "network_prefix": topo["prefix"],
        "vip": topo["vip"],
        "keepalived_auth_pass": store_secret("keepalived_auth_pass", 8),
        "k3s_install": "download",  # the VMs reach the internet through Vagrant's NAT
        "longhorn_enabled": True,
        "nfs_backend": "kernel",
        "syncthing_gui_password": store_secret("syncthing_gui_password", 24),
        "samba_users": {SAMBA_USER: store_secret(f"samba_{SAMBA_USER}", 16)},
        "samba_shares": [
            {"name": "data", "path": "data", "read_only": False, "valid_users": [SAMBA_USER], "guest_ok": False},
        ],
        # NFS has no password: read-write to the host (VirtualBox's host-only address .1) only.
        "nfs_exports": [{"path": "data", "networks": [f"{next(ipaddress.ip_network(topo['subnet']).hosts())}/32"], "read_only": False}],
        "node_arch": topo["arch"],
    }
    groups: dict[str, list] = {"k3s_servers": [], "k3s_agents": [], "dnas": []}
    for node in topo["nodes"]:
        name = node["name"]
        if name not in sections:
            raise LabNotUp(f"{name}: `vagrant ssh-config` gave nothing for it. Fix: run `python -m lab.vagrant up`")
        conf = v.conf(ssh_config=sections[name], vm_name=name)
        data = {
            "ssh_hostname": conf["HostName"],
            "ssh_port": int(conf.get("Port", 22)),
            "ssh_user": conf.get("User", "vagrant"),
            "node_ip": node["ip"],
            "lab_node": name,  # as inventories/lab.py: the lab tests map hosts to lab nodes
            "node_interface": _interface(node, topo, states[name], recorded, env),
            **cluster,
        }
        if conf.get("IdentityFile"):
            data["ssh_key"] = conf["IdentityFile"]
        # Two NICs: the default route is Vagrant's NAT (VirtualBox gives every VM the same
        # 10.0.2.15 there), so flannel must use the private network explicitly.
        data["k3s_server_config"] = {"flannel-iface": data["node_interface"]}
        data["k3s_agent_config"] = {"flannel-iface": data["node_interface"]}
        if "dnas" in node["groups"]:
            # The extra disk is blank: the dnas layer formats it (only because it is blank).
            data["dnas_device"] = "LABEL=homecloud-data"
            data["dnas_format"] = True
            data["dnas_blank_device"] = blank_disk_path(topo, states[name].provider)
        for index, group in enumerate(node["groups"]):
            groups.setdefault(group, []).append((name, data) if index == 0 else name)
    return groups


# --- CLI --------------------------------------------------------------------------------------


def _print_status() -> None:
    topo = topology()
    states = {s.name: s for s in status()}
    print(f"vagrant lab: {topo['box']} ({topo['arch']}), network {topo['subnet']}, VIP {topo['vip']}")
    for node in topo["nodes"]:
        st = states.get(node["name"])
        state = f"{st.state} ({st.provider})" if st else "not defined"
        print(f"  {node['name']:<8} {node['ip']:<16} {','.join(node['groups']):<24} {state}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"up": up, "destroy": destroy, "status": _print_status}
    if len(argv) != 1 or argv[0] not in (*commands, "available"):
        print("usage: python -m lab.vagrant up|destroy|status|available", file=sys.stderr)
        return 2
    if argv[0] == "available":
        ok, reason = available()
        print(reason)
        return 0 if ok else 1
    try:
        commands[argv[0]]()
        if argv[0] == "up":
            _print_status()
    except (InventoryError, subprocess.CalledProcessError) as e:
        print(f"lab.vagrant {argv[0]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
