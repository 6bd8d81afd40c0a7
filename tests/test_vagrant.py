"""
The Vagrant lab, unit tier (no VM is started):

- `vagrant validate` on the real Vagrantfile with each provider this machine can validate:
  libvirt through the vagrant-libvirt plugin; VirtualBox through Vagrant's own VirtualBox
  provider, with a stand-in VBoxManage that only answers `--version` (Vagrant asks nothing else
  to validate, and the stand-in fails on anything else). Parallels cannot be validated here (its
  plugin is not installed): Vagrant only parses that block. A control run with a wrong setting
  injected shows the validation really fails.
- The topology the Vagrantfile configures (dumped by it through HOMECLOUD_VAGRANT_TOPOLOGY_OUT)
  equals the one lab.vagrant builds the inventory from, for several environment overrides.
- The inventory built from a python-vagrant object whose vagrant command outputs are recorded
  `vagrant status --machine-readable` / `vagrant ssh-config` outputs passes homecloud's validation,
  also when loaded through pyinfra from inventories/vagrant.py; a lab that is down is refused with
  the command to run, not a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import vagrant as python_vagrant

from homecloud.model import REPO_ROOT, hosts_from_inventory_namespace, validate
from lab import vagrant as lab_vagrant

VAGRANT = shutil.which("vagrant")
needs_vagrant = pytest.mark.skipif(VAGRANT is None, reason="vagrant is not installed (scripts/setup installs it)")


def _plugins() -> set[str]:
    if VAGRANT is None:
        return set()
    return {p.name for p in python_vagrant.Vagrant(str(REPO_ROOT)).plugin_list()}


# --- vagrant validate + topology consistency ---------------------------------------------------


@pytest.fixture(scope="module")
def vboxmanage_stub(tmp_path_factory):
    """A VBoxManage that answers `--version` like VirtualBox 7.0 and refuses anything else."""
    folder = tmp_path_factory.mktemp("vboxbin")
    log = folder / "calls.log"
    stub = folder / "VBoxManage"
    stub.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'if [ "$*" = "--version" ]; then echo 7.0.14r161095; exit 0; fi\n'
        'echo "VBoxManage stand-in: unexpected call: $*" >&2\n'
        "exit 1\n"
    )
    stub.chmod(0o755)
    return folder, log


def _vagrant_env(tmp_path: Path, provider: str, extra: dict[str, str], path_prefix: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMECLOUD_VAGRANT_", "VAGRANT_"))}
    env.update(
        VAGRANT_DEFAULT_PROVIDER=provider,
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),  # never the repo's .vagrant (a real lab's state)
        VAGRANT_CHECKPOINT_DISABLE="1",
        HOMECLOUD_VAGRANT_TOPOLOGY_OUT=str(tmp_path / "topology.json"),
        **extra,
    )
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return env


def _validate(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([VAGRANT, "validate"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


OVERRIDES = [
    pytest.param({}, id="defaults"),
    pytest.param({"HOMECLOUD_VAGRANT_NODES": "8"}, id="8-nodes"),
    pytest.param({"HOMECLOUD_VAGRANT_NODES": "1"}, id="1-node"),
    pytest.param({"HOMECLOUD_VAGRANT_SUBNET": "10.20.30.0/24"}, id="subnet"),
    pytest.param({"HOMECLOUD_VAGRANT_SUBNET": "192.168.56.77/23"}, id="subnet-host-bits"),
    pytest.param({"HOMECLOUD_VAGRANT_ARCH": "arm64"}, id="arm64"),
    pytest.param({"HOMECLOUD_VAGRANT_ARCH": "amd64", "HOMECLOUD_VAGRANT_BOX": "example/bookworm"}, id="box"),
]


# Every override with libvirt; VirtualBox with the ones that change its blocks (keeps this tier fast).
CASES = [pytest.param("libvirt", p.values[0], id=f"libvirt-{p.id}") for p in OVERRIDES] + [
    pytest.param("virtualbox", p.values[0], id=f"virtualbox-{p.id}") for p in OVERRIDES if p.id in ("defaults", "8-nodes", "arm64")
]


@needs_vagrant
@pytest.mark.parametrize("provider, overrides", CASES)
def test_vagrantfile_validates_and_matches_inventory_topology(tmp_path, provider, overrides, vboxmanage_stub):
    if provider == "libvirt" and "vagrant-libvirt" not in _plugins():
        pytest.skip("the vagrant-libvirt plugin is not installed (Debian: apt install vagrant-libvirt)")
    stub_dir, stub_log = vboxmanage_stub
    env = _vagrant_env(tmp_path, provider, overrides, stub_dir if provider == "virtualbox" else None)

    done = _validate(REPO_ROOT, env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout
    if provider == "virtualbox":
        assert set(stub_log.read_text().split("\n")) <= {"--version", ""}
    configured = json.loads((tmp_path / "topology.json").read_text())
    expected = lab_vagrant.topology(env)
    for key in lab_vagrant.INVENTORY_ONLY_KEYS:
        expected.pop(key)
    assert configured == expected
    assert [n["name"] for n in configured["nodes"]] == [f"node{i}" for i in range(1, len(configured["nodes"]) + 1)]


@needs_vagrant
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"HOMECLOUD_VAGRANT_NODES": "9"}, "HOMECLOUD_VAGRANT_NODES=9: use 1 to 8"),
        ({"HOMECLOUD_VAGRANT_NODES": "four"}, "HOMECLOUD_VAGRANT_NODES=four: use 1 to 8"),
        ({"HOMECLOUD_VAGRANT_SUBNET": "10.0.0.0/29"}, "HOMECLOUD_VAGRANT_SUBNET=10.0.0.0/29: too small for host .11"),
        ({"HOMECLOUD_VAGRANT_ARCH": "riscv64"}, "HOMECLOUD_VAGRANT_ARCH=riscv64: use amd64 or arm64"),
    ],
)
def test_bad_overrides_are_refused_by_both_sides(tmp_path, overrides, message):
    done = _validate(REPO_ROOT, _vagrant_env(tmp_path, "virtualbox", overrides))
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    with pytest.raises(lab_vagrant.InventoryError, match=message.replace(".", r"\.")):
        lab_vagrant.topology({**overrides})


@needs_vagrant
@pytest.mark.parametrize(
    "provider, block, setting",
    [("libvirt", "node.vm.provider :libvirt do |lv|", "lv.no_such_setting = 1"), ("virtualbox", "node.vm.provider :virtualbox do |vb, override|", "vb.no_such_setting = 1")],
)
def test_validation_catches_a_wrong_provider_setting(tmp_path, provider, block, setting, vboxmanage_stub):
    """Control: the same harness fails on a Vagrantfile with a setting the provider does not have."""
    if provider == "libvirt" and "vagrant-libvirt" not in _plugins():
        pytest.skip("the vagrant-libvirt plugin is not installed")
    root = tmp_path / "repo"
    (root / "lab").mkdir(parents=True)
    shutil.copy(lab_vagrant.TOPOLOGY_FILE, root / "lab" / lab_vagrant.TOPOLOGY_FILE.name)
    text = (REPO_ROOT / "Vagrantfile").read_text()
    assert block in text
    (root / "Vagrantfile").write_text(text.replace(block, f"{block}\n        {setting}"))
    stub_dir, _ = vboxmanage_stub

    done = _validate(root, _vagrant_env(tmp_path, provider, {}, stub_dir if provider == "virtualbox" else None))

    assert done.returncode != 0
    assert "no_such_setting" in done.stdout + done.stderr


# --- The inventory, from recorded vagrant outputs ---------------------------------------------


def _status_output(states: dict[str, str], provider: str = "libvirt") -> str:
    """`vagrant status --machine-readable` as Vagrant 2.3 prints it for a multi-machine file."""
    human = {
        "running": "The Libvirt domain is running. To stop this machine%!(VAGRANT_COMMA) you can run\\n`vagrant halt`.",
        "not_created": "The Libvirt domain is not created. Run `vagrant up` to create it.",
        "shutoff": "The Libvirt domain is not running. Run `vagrant up` to start it.",
    }
    lines = []
    for name, state in states.items():
        lines += [
            f"1795766803,{name},metadata,provider,{provider}",
            f"1795766803,{name},provider-name,{provider}",
            f"1795766803,{name},state,{state}",
            f"1795766803,{name},state-human-short,{state.replace('_', ' ')}",
            f"1795766803,{name},state-human-long,{human[state]}",
        ]
    lines.append("1795766803,,ui,info,Current machine states:\\n\\n" + "\\n".join(f"{n}  {s} ({provider})" for n, s in states.items()))
    return "\n".join(lines) + "\n"


def _ssh_config_output(names: list[str], provider: str = "libvirt") -> str:
    """`vagrant ssh-config node1 node2 ...` (Vagrant 2.3's template), libvirt or VirtualBox style."""
    out = []
    for index, name in enumerate(names):
        host, port = (f"192.168.121.{57 + index}", 22) if provider == "libvirt" else ("127.0.0.1", 2222 + index)
        out.append(
            f"Host {name}\n"
            f"  HostName {host}\n"
            "  User vagrant\n"
            f"  Port {port}\n"
            "  UserKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking no\n"
            "  PasswordAuthentication no\n"
            f"  IdentityFile {REPO_ROOT}/.vagrant/machines/{name}/{provider}/private_key\n"
            "  IdentitiesOnly yes\n"
            "  LogLevel FATAL\n"
            "\n"
        )
    return "".join(out)


class RecordedVagrant(python_vagrant.Vagrant):
    """python-vagrant with the vagrant command replaced by recorded outputs (its parsing is real)."""

    def __init__(self, states: dict[str, str], provider: str = "libvirt"):
        super().__init__(str(REPO_ROOT))
        self.states = states
        self.provider = provider
        self.calls: list[list[str]] = []

    def _run_vagrant_command(self, args):
        args = [a for a in args if a is not None]
        self.calls.append(args)
        if args == ["status", "--machine-readable"]:
            return _status_output(self.states, self.provider)
        if args[0] == "ssh-config":
            if any(self.states.get(n) != "running" for n in args[1:]):
                raise subprocess.CalledProcessError(1, ["vagrant", *args])
            return _ssh_config_output(args[1:], self.provider)
        raise AssertionError(f"unexpected vagrant call: {args}")


def _namespace(groups: dict) -> dict:
    return {"k3s_servers": groups["k3s_servers"], "k3s_agents": groups["k3s_agents"], "dnas": groups["dnas"]}


@pytest.fixture
def clean_env(tmp_path):
    """An environment without HOMECLOUD_VAGRANT_* overrides and with its own Vagrant folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMECLOUD_VAGRANT_", "VAGRANT_"))}
    env["VAGRANT_DOTFILE_PATH"] = str(tmp_path / "dot")
    env["HOMECLOUD_VAGRANT_ARCH"] = "amd64"
    return env


@pytest.fixture
def clean_environ(clean_env, monkeypatch):
    """os.environ itself set to clean_env (for code that reads the process environment)."""
    for key in [k for k in os.environ if k not in clean_env]:
        monkeypatch.delenv(key)
    for key, value in clean_env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_inventory_from_running_lab_passes_validation(tmp_path, clean_env, provider):
    names = ["node1", "node2", "node3", "node4"]
    fake = RecordedVagrant({n: "running" for n in names}, provider)

    groups = lab_vagrant.inventory_groups(v=fake, env=clean_env, secrets_dir=tmp_path / "secrets")

    specs, errors = hosts_from_inventory_namespace(_namespace(groups), str(REPO_ROOT / "inventories" / "vagrant.py"))
    assert errors == []
    assert validate(specs) == []
    by_name = {s.name: s for s in specs}
    assert list(by_name) == names
    assert {n: set(s.groups) for n, s in by_name.items()} == {
        "node1": {"k3s_servers", "dnas"},
        "node2": {"k3s_servers", "dnas"},
        "node3": {"k3s_servers"},
        "node4": {"k3s_agents"},
    }
    node1 = by_name["node1"].data
    if provider == "libvirt":
        assert (node1["ssh_hostname"], node1["ssh_port"]) == ("192.168.121.57", 22)
    else:
        assert (node1["ssh_hostname"], by_name["node4"].data["ssh_port"]) == ("127.0.0.1", 2225)
    assert node1["ssh_user"] == "vagrant"
    assert node1["ssh_key"] == f"{REPO_ROOT}/.vagrant/machines/node1/{provider}/private_key"
    assert node1["ssh_known_hosts_file"] == "/dev/null"
    assert node1["ssh_strict_host_key_checking"] == "off"
    assert node1["_sudo"] is True
    assert [by_name[n].data["node_ip"] for n in names] == ["192.168.56.11", "192.168.56.12", "192.168.56.13", "192.168.56.14"]
    assert {by_name[n].data["node_interface"] for n in names} == {"eth1"}  # Debian's boxes
    assert (node1["vip"], node1["network_prefix"]) == ("192.168.56.10", 24)
    assert (node1["k3s_install"], node1["longhorn_enabled"], node1["nfs_backend"]) == ("download", True, "kernel")
    assert node1["nfs_exports"][0]["networks"] == ["192.168.56.1/32"]  # read-write to the host only
    assert (node1["dnas_device"], node1["dnas_format"]) == ("LABEL=homecloud-data", True)
    blank = {"libvirt": "/dev/disk/by-id/virtio-homecloud-data", "virtualbox": "/dev/disk/by-id/homecloud-data-disk"}
    assert by_name["node2"].data["dnas_blank_device"] == blank[provider]
    assert node1["k3s_server_config"] == {"flannel-iface": "eth1"}  # not the NAT interface
    assert by_name["node4"].data["k3s_agent_config"] == {"flannel-iface": "eth1"}
    assert by_name["node3"].data["dnas_device"] is None  # the default: no data disk
    # Secrets come from the vagrant store, generated once and kept (0600).
    stored = json.loads((tmp_path / "secrets" / "vagrant.json").read_text())
    assert node1["keepalived_auth_pass"] == stored["keepalived_auth_pass"]
    assert node1["samba_users"] == {"alice": stored["samba_alice"]}
    assert oct((tmp_path / "secrets" / "vagrant.json").stat().st_mode & 0o777) == "0o600"
    # One `vagrant status` and one `vagrant ssh-config` for all nodes (each costs ~1 s).
    assert fake.calls == [["status", "--machine-readable"], ["ssh-config", *names]]


def test_inventory_with_eight_nodes(tmp_path, clean_env):
    names = [f"node{i}" for i in range(1, 9)]
    fake = RecordedVagrant({n: "running" for n in names})
    env = {**clean_env, "HOMECLOUD_VAGRANT_NODES": "8", "HOMECLOUD_VAGRANT_SUBNET": "10.20.30.0/24"}

    groups = lab_vagrant.inventory_groups(v=fake, env=env, secrets_dir=tmp_path)

    specs, errors = hosts_from_inventory_namespace(_namespace(groups), None)
    assert errors == [] and validate(specs) == []
    assert [s.name for s in specs if "k3s_agents" in s.groups] == names[3:]
    assert specs[-1].data["node_ip"] == "10.20.30.18"
    assert specs[0].data["vip"] == "10.20.30.10"


@pytest.mark.parametrize(
    "states, shown",
    [
        ({"node1": "not_created", "node2": "not_created", "node3": "not_created", "node4": "not_created"}, "node1: not_created"),
        ({"node1": "running", "node2": "running", "node3": "shutoff", "node4": "running"}, "node3: poweroff"),
        ({"node1": "running", "node2": "running", "node3": "running"}, "node4: not defined"),
    ],
)
def test_inventory_refuses_a_lab_that_is_not_up(tmp_path, clean_env, states, shown):
    with pytest.raises(lab_vagrant.LabNotUp) as caught:
        lab_vagrant.inventory_groups(v=RecordedVagrant(states), env=clean_env, secrets_dir=tmp_path,
                                     provider_check=lambda: (True, "vagrant with the libvirt provider"))
    message = str(caught.value)
    assert message.startswith("vagrant lab is not up")
    assert shown in message
    assert "python -m lab.vagrant up" in message


class FailingVagrant(RecordedVagrant):
    """`vagrant status` exits non-zero, as it does when the default provider cannot be used."""

    def _run_vagrant_command(self, args):
        raise subprocess.CalledProcessError(1, ["vagrant", *args])


@pytest.mark.parametrize("vagrant_kind", [RecordedVagrant, FailingVagrant], ids=["status-works", "status-fails"])
def test_inventory_without_a_usable_provider_says_what_to_install(tmp_path, clean_env, vagrant_kind):
    why = "no usable Vagrant provider: libvirt: virsh not found; virtualbox: VBoxManage not found or not working"
    with pytest.raises(lab_vagrant.LabNotUp) as caught:
        lab_vagrant.inventory_groups(v=vagrant_kind({n: "not_created" for n in ("node1", "node2", "node3", "node4")}),
                                     env=clean_env, secrets_dir=tmp_path, provider_check=lambda: (False, why))
    message = str(caught.value)
    assert message.startswith(f"vagrant lab: {why}. Fix: install a hypervisor")
    assert "vagrant-libvirt" in message and "VirtualBox" in message and "Parallels" in message


def test_a_running_lab_is_not_slowed_by_the_provider_check(tmp_path, clean_env):
    """The provider diagnosis costs a `vagrant plugin list`: only a lab that is not up pays it."""

    def never():
        raise AssertionError("provider check on a running lab")

    names = ("node1", "node2", "node3", "node4")
    groups = lab_vagrant.inventory_groups(v=RecordedVagrant({n: "running" for n in names}), env=clean_env,
                                          secrets_dir=tmp_path, provider_check=never)
    assert [name for name, _ in groups["k3s_servers"]] == ["node1", "node2", "node3"]


def _record(clean_env, interface: str, machine_id: str) -> None:
    dot = Path(clean_env["VAGRANT_DOTFILE_PATH"])
    (dot / "machines" / "node1" / "libvirt").mkdir(parents=True)
    (dot / "machines" / "node1" / "libvirt" / "id").write_text("3b0c1f8e-0b5e-4f0c-9d4e-6e1d2a9c7f10")
    (dot / lab_vagrant.INTERFACES_FILE).write_text(json.dumps({"node1": {"id": machine_id, "interface": interface}}))


def test_recorded_interface_is_used_for_the_same_machine_only(tmp_path, clean_env):
    running = {f"node{i}": "running" for i in range(1, 5)}
    _record(clean_env, "enp0s6", "3b0c1f8e-0b5e-4f0c-9d4e-6e1d2a9c7f10")
    groups = lab_vagrant.inventory_groups(v=RecordedVagrant(running), env=clean_env, secrets_dir=tmp_path)
    assert groups["k3s_servers"][0][1]["node_interface"] == "enp0s6"
    assert groups["k3s_servers"][1][1]["node_interface"] == "eth1"

    # A rebuilt VM (another id) falls back to the box's convention.
    (Path(clean_env["VAGRANT_DOTFILE_PATH"]) / lab_vagrant.INTERFACES_FILE).write_text(
        json.dumps({"node1": {"id": "an-older-machine", "interface": "enp0s6"}})
    )
    groups = lab_vagrant.inventory_groups(v=RecordedVagrant(running), env=clean_env, secrets_dir=tmp_path)
    assert groups["k3s_servers"][0][1]["node_interface"] == "eth1"


def test_unknown_box_interface_asks_for_up_or_override(tmp_path, clean_env):
    running = {f"node{i}": "running" for i in range(1, 5)}
    env = {**clean_env, "HOMECLOUD_VAGRANT_BOX": "someone/bookworm"}
    with pytest.raises(lab_vagrant.LabNotUp, match="HOMECLOUD_VAGRANT_INTERFACE"):
        lab_vagrant.inventory_groups(v=RecordedVagrant(running), env=env, secrets_dir=tmp_path)
    groups = lab_vagrant.inventory_groups(
        v=RecordedVagrant(running), env={**env, "HOMECLOUD_VAGRANT_INTERFACE": "ens6"}, secrets_dir=tmp_path
    )
    assert groups["k3s_agents"][0][1]["node_interface"] == "ens6"


def test_inventory_file_loads_through_pyinfra(tmp_path, clean_environ, monkeypatch):
    """inventories/vagrant.py as pyinfra loads it: groups, host data, group_data defaults."""
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    names = ["node1", "node2", "node3", "node4"]
    monkeypatch.setattr(lab_vagrant, "_vagrant", lambda quiet=True: RecordedVagrant({n: "running" for n in names}))
    monkeypatch.setenv("HOMECLOUD_KEEPALIVED_AUTH_PASS", "Vq3xR8tz")
    monkeypatch.setenv("HOMECLOUD_SAMBA_ALICE", "c0rrect-h0rse-batt")
    monkeypatch.chdir(REPO_ROOT)

    state = State()
    with ctx_state.use(state):
        inventory = make_inventory("inventories/vagrant.py", cwd=str(REPO_ROOT))
        state.init(inventory, Config())
        hosts = {h.name: h for h in inventory}
        assert list(hosts) == names
        assert sorted(h.name for h in inventory.get_group("dnas")) == ["node1", "node2"]
        node2 = hosts["node2"].data
        assert (node2.ssh_hostname, node2.node_ip, node2.keepalived_auth_pass) == ("192.168.121.58", "192.168.56.12", "Vq3xR8tz")
        assert node2.dnas_format is True and node2.dnas_path == "/srv/dnas"  # default from group_data/all.py
        assert hosts["node4"].data.samba_users == {"alice": "c0rrect-h0rse-batt"}


@needs_vagrant
@pytest.mark.parametrize(
    "vboxmanage, expected",
    [
        # VirtualBox answers (the stand-in): the VMs are simply not created yet.
        ("working", ["vagrant lab is not up (node1: not_created", "Fix: run `python -m lab.vagrant up`"]),
        # Nothing Vagrant can drive (this machine without a hypervisor): say what to install.
        ("broken", ["vagrant lab: no usable Vagrant provider: virtualbox: VBoxManage not found or not working",
                    "Fix: install a hypervisor Vagrant can drive: libvirt with the vagrant-libvirt plugin"]),
    ],
)
def test_inventory_file_without_vms_fails_with_what_to_do(tmp_path, clean_env, vboxmanage_stub, vboxmanage, expected):
    """No VM exists: pyinfra stops while loading the inventory, with a message and no traceback."""
    if vboxmanage == "working":
        stub_dir = vboxmanage_stub[0]
    else:
        stub_dir = tmp_path / "broken-bin"
        stub_dir.mkdir()
        (stub_dir / "VBoxManage").write_text("#!/bin/sh\necho 'VirtualBox kernel driver not installed' >&2\nexit 1\n")
        (stub_dir / "VBoxManage").chmod(0o755)
    env = {**clean_env, "VAGRANT_DEFAULT_PROVIDER": "virtualbox", "VAGRANT_CHECKPOINT_DISABLE": "1",
           "PATH": f"{stub_dir}{os.pathsep}{clean_env['PATH']}"}
    pyinfra = Path(sys.executable).with_name("pyinfra")
    done = subprocess.run(
        [str(pyinfra), "-y", "inventories/vagrant.py", "exec", "--", "true"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    for text in expected:
        assert text in output
    assert "Traceback" not in output


def test_destroy_covers_nodes_created_with_a_larger_count(tmp_path, clean_env, clean_environ, monkeypatch):
    """VMs made with HOMECLOUD_VAGRANT_NODES=8 are destroyed even when the variable is unset now."""
    dot = Path(clean_env["VAGRANT_DOTFILE_PATH"])
    for i in (1, 2, 7, 8):
        (dot / "machines" / f"node{i}" / "libvirt").mkdir(parents=True)
        (dot / "machines" / f"node{i}" / "libvirt" / "id").write_text(f"id-{i}")
    (dot / "machines" / "node9" / "libvirt").mkdir(parents=True)  # never created: no id

    class Recorder:
        env = None

        def destroy(self):
            self.destroyed_with = dict(self.env)

    recorder = Recorder()
    monkeypatch.setattr(lab_vagrant, "_vagrant", lambda quiet=True: recorder)

    assert lab_vagrant._created_nodes() == 8
    lab_vagrant.destroy()
    assert recorder.destroyed_with["HOMECLOUD_VAGRANT_NODES"] == "8"

    monkeypatch.setenv("HOMECLOUD_VAGRANT_NODES", "8")
    for i in (7, 8):
        (dot / "machines" / f"node{i}" / "libvirt" / "id").unlink()
    lab_vagrant.destroy()
    assert recorder.destroyed_with["HOMECLOUD_VAGRANT_NODES"] == "8"  # the user's own value, kept
    monkeypatch.delenv("HOMECLOUD_VAGRANT_NODES")
    lab_vagrant.destroy()
    assert "HOMECLOUD_VAGRANT_NODES" not in recorder.destroyed_with


def test_blank_disk_paths_are_the_ones_the_vagrantfile_makes():
    """libvirt: the disk's serial from the topology file; VirtualBox / Parallels: the udev link."""
    text = (REPO_ROOT / "Vagrantfile").read_text()
    topo = lab_vagrant.topology({"HOMECLOUD_VAGRANT_ARCH": "amd64"})
    assert 'serial: HOMECLOUD_TOPOLOGY["data_disk_serial"]' in text
    assert lab_vagrant.blank_disk_path(topo, "libvirt") == f"/dev/disk/by-id/virtio-{topo['data_disk_serial']}"
    link = lab_vagrant.blank_disk_path(topo, "virtualbox")
    assert link == lab_vagrant.blank_disk_path(topo, "parallels")
    assert f'SYMLINK+="{link.removeprefix("/dev/")}"' in text
    assert f"test -e {link}" in text


def test_up_records_the_interface_each_vm_reports(tmp_path, clean_env, clean_environ):
    """`ip -o -4 addr show to IP/32` as Debian 12 prints it -> the interface, with the machine id."""
    dot = Path(clean_env["VAGRANT_DOTFILE_PATH"])
    (dot / "machines" / "node1" / "libvirt").mkdir(parents=True)
    (dot / "machines" / "node1" / "libvirt" / "id").write_text("0d8e2c1a-5f5e-4c57-9d0b-1c2f3e4d5a6b\n")

    class AnsweringVagrant(RecordedVagrant):
        def _run_vagrant_command(self, args):
            args = [a for a in args if a is not None]
            if args[0] == "ssh":
                self.calls.append(args)
                ip = {"node1": "192.168.56.11", "node2": "192.168.56.12", "node3": "192.168.56.13"}[args[1]]
                name = "enp0s6" if args[1] == "node2" else "eth1"
                return (
                    f"3: {name}    inet {ip}/24 brd 192.168.56.255 scope global {name}\\"
                    "       valid_lft forever preferred_lft forever\n"
                )
            return super()._run_vagrant_command(args)

    fake = AnsweringVagrant({"node1": "running", "node2": "running", "node3": "running", "node4": "not_created"})
    found = lab_vagrant.record_interfaces(fake)

    assert found == {
        "node1": {"id": "0d8e2c1a-5f5e-4c57-9d0b-1c2f3e4d5a6b", "interface": "eth1"},
        "node2": {"id": "", "interface": "enp0s6"},
        "node3": {"id": "", "interface": "eth1"},
    }
    assert ["ssh", "node1", "--command", "ip -o -4 addr show to 192.168.56.11/32"] in fake.calls
    assert json.loads((dot / lab_vagrant.INTERFACES_FILE).read_text()) == found


@needs_vagrant
def test_provider_choice_follows_what_is_usable(monkeypatch, vboxmanage_stub):
    stub_dir, _ = vboxmanage_stub
    monkeypatch.setenv("VAGRANT_DEFAULT_PROVIDER", "virtualbox")
    monkeypatch.setenv("PATH", f"{stub_dir}{os.pathsep}{os.environ['PATH']}")
    assert lab_vagrant.available() == (True, "vagrant with the virtualbox provider")

    monkeypatch.setenv("VAGRANT_DEFAULT_PROVIDER", "hyperv")
    assert lab_vagrant.available() == (
        False,
        "no usable Vagrant provider: hyperv: not a provider this Vagrantfile configures (libvirt, virtualbox, parallels)",
    )

    monkeypatch.setattr(lab_vagrant.shutil, "which", lambda name: None)
    assert lab_vagrant.available() == (
        False,
        "vagrant is not installed (Debian: apt install vagrant; else https://developer.hashicorp.com/vagrant/install)",
    )
    with pytest.raises(lab_vagrant.LabNotUp, match="cannot start the vagrant lab: vagrant is not installed"):
        lab_vagrant.up()
