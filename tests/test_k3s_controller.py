"""
Controller-side k3s logic: the binary source (download / airgap, checksums), the config flag
table, the kubeconfig merge, the readiness wait (with a fake Kubernetes API), and the parts of
the k3s operations that need another host (the cross-host token read, the rolling-restart stop).
"""

from __future__ import annotations

import hashlib
import os
import stat
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from homecloud import k3s_binary, k3s_config, kubeconfig, readiness

VERSION = "v1.31.4+k3s1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- architecture and asset names -------------------------------------------------------------


@pytest.mark.parametrize(
    "machine,arch",
    [("x86_64", "amd64"), ("aarch64", "arm64"), ("armv7l", "armhf"), ("armv6l", None), ("riscv64", None), ("", None)],
)
def test_arch_from_machine(machine, arch):
    assert k3s_binary.arch_from_machine(machine) == arch


def test_release_asset_names_follow_the_k3s_release_page():
    assert [k3s_binary.BINARY_NAME[a] for a in ("amd64", "arm64", "armhf")] == ["k3s", "k3s-arm64", "k3s-armhf"]
    # The 32-bit ARM release is "arm" in the checksum and image names.
    assert k3s_binary.checksum_names("armhf")[0] == "sha256sum-arm.txt"
    assert k3s_binary.checksum_names("arm64") == ["sha256sum-arm64.txt"]
    assert k3s_binary.image_names("armhf")[0] == "k3s-airgap-images-arm.tar.zst"


def test_parse_sha256sums_reads_both_sha256sum_formats_and_skips_junk():
    text = f"{'a' * 64}  k3s\n{'b' * 64} *k3s-airgap-images-amd64.tar.zst\nnot a line\n{'c' * 10}  short\n"
    assert k3s_binary.parse_sha256sums(text) == {"k3s": "a" * 64, "k3s-airgap-images-amd64.tar.zst": "b" * 64}


# --- airgap ------------------------------------------------------------------------------------


def make_airgap(folder: Path, arch="amd64", binary=b"#!/bin/sh\necho k3s\n", images=b"images", corrupt=False, sum_name=None):
    name = k3s_binary.BINARY_NAME[arch]
    (folder / name).write_bytes(binary)
    image_name = k3s_binary.image_names(arch)[0]
    (folder / image_name).write_bytes(images)
    listed = binary if not corrupt else binary + b"tampered"
    sum_name = sum_name or k3s_binary.checksum_names(arch)[0]
    (folder / sum_name).write_text(f"{sha(listed)}  {name}\n{sha(images)}  {image_name}\n")
    return name, image_name


def test_airgap_gives_verified_binary_and_images(tmp_path):
    name, image_name = make_airgap(tmp_path, "arm64")
    release = k3s_binary.resolve("airgap", VERSION, "arm64", airgap_dir=str(tmp_path))
    assert release.binary.path == tmp_path / name
    assert release.binary.sha256 == sha((tmp_path / name).read_bytes())
    assert [a.path.name for a in release.images] == [image_name]


def test_airgap_armhf_accepts_the_release_checksum_name(tmp_path):
    make_airgap(tmp_path, "armhf")
    assert (tmp_path / "sha256sum-arm.txt").exists()
    assert k3s_binary.resolve("airgap", VERSION, "armhf", airgap_dir=str(tmp_path)).binary.path.name == "k3s-armhf"


def test_airgap_refuses_a_corrupted_binary(tmp_path):
    make_airgap(tmp_path, corrupt=True)
    with pytest.raises(k3s_binary.K3sSourceError, match="does not match its checksum"):
        k3s_binary.resolve("airgap", VERSION, "amd64", airgap_dir=str(tmp_path))


def test_airgap_refuses_a_binary_without_checksum_file(tmp_path):
    (tmp_path / "k3s").write_bytes(b"x")
    with pytest.raises(k3s_binary.K3sSourceError, match="sha256sum-amd64.txt"):
        k3s_binary.resolve("airgap", VERSION, "amd64", airgap_dir=str(tmp_path))


def test_airgap_missing_binary_for_the_arch(tmp_path):
    make_airgap(tmp_path, "amd64")
    (tmp_path / "sha256sum-arm64.txt").write_text(f"{'0' * 64}  k3s-arm64\n")
    with pytest.raises(k3s_binary.K3sSourceError, match="no `k3s-arm64`"):
        k3s_binary.resolve("airgap", VERSION, "arm64", airgap_dir=str(tmp_path))


def test_airgap_without_folder_names_both_options():
    with pytest.raises(k3s_binary.K3sSourceError) as e:
        k3s_binary.resolve("airgap", VERSION, "amd64", airgap_dir=None)
    assert 'k3s_install="download"' in str(e.value) and 'k3s_install="airgap"' in str(e.value)


def test_unsupported_arch_is_refused():
    with pytest.raises(k3s_binary.K3sSourceError, match="architecture"):
        k3s_binary.resolve("download", VERSION, None)


# --- download ----------------------------------------------------------------------------------


class FakeRelease:
    """Serves release assets from a dict and records what was fetched."""

    def __init__(self, assets: dict[str, bytes]):
        self.assets = assets
        self.fetched: list[str] = []

    def __call__(self, url: str, dest: Path) -> None:
        self.fetched.append(url)
        name = url.rsplit("/", 1)[1]
        if name not in self.assets:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        dest.write_bytes(self.assets[name])


def test_download_verifies_caches_and_reuses(tmp_path):
    binary = b"\x7fELF fake k3s"
    release = FakeRelease({"k3s-arm64": binary, "sha256sum-arm64.txt": f"{sha(binary)}  k3s-arm64\n".encode()})
    got = k3s_binary.resolve("download", VERSION, "arm64", download_dir=str(tmp_path), fetch=release)
    assert got.binary.path == tmp_path / VERSION / "k3s-arm64"
    assert got.binary.path.read_bytes() == binary
    assert stat.S_IMODE(os.stat(got.binary.path).st_mode) == 0o755
    assert release.fetched == [
        "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/sha256sum-arm64.txt",
        "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/k3s-arm64",
    ]
    # A second run (another pyinfra process) uses the verified cache: no network.
    offline = FakeRelease({})
    again = k3s_binary.resolve("download", VERSION, "arm64", download_dir=str(tmp_path), fetch=offline)
    assert again.binary.sha256 == sha(binary) and offline.fetched == []


def test_download_refuses_a_binary_that_does_not_match(tmp_path):
    release = FakeRelease({"k3s": b"evil", "sha256sum-amd64.txt": f"{sha(b'good')}  k3s\n".encode()})
    with pytest.raises(k3s_binary.K3sSourceError, match="does not match its checksum"):
        k3s_binary.resolve("download", VERSION, "amd64", download_dir=str(tmp_path), fetch=release)
    # Nothing unverified is left in the cache.
    assert not (tmp_path / VERSION / "k3s").exists()


def test_download_of_a_corrupted_cache_is_redone(tmp_path):
    binary = b"good k3s"
    sums = f"{sha(binary)}  k3s\n".encode()
    (tmp_path / VERSION).mkdir()
    (tmp_path / VERSION / "k3s").write_bytes(b"half a download")
    (tmp_path / VERSION / "sha256sum-amd64.txt").write_bytes(sums)
    release = FakeRelease({"k3s": binary, "sha256sum-amd64.txt": sums})
    got = k3s_binary.resolve("download", VERSION, "amd64", download_dir=str(tmp_path), fetch=release)
    assert got.binary.path.read_bytes() == binary and len(release.fetched) == 2


def test_unreachable_github_gives_one_message_naming_both_options(tmp_path):
    def no_network(url, dest):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    cache: dict = {}
    with pytest.raises(k3s_binary.K3sSourceError) as e:
        k3s_binary.resolve("download", VERSION, "amd64", download_dir=str(tmp_path), fetch=no_network, cache=cache)
    message = str(e.value)
    assert "github.com reachable from the controller" in message
    assert 'k3s_install="airgap" with k3s_airgap_dir=' in message
    assert "Nothing was changed on any host" in message
    # The failure is remembered for the run: other hosts get the same error without retrying.
    with pytest.raises(k3s_binary.K3sSourceError):
        k3s_binary.resolve("download", VERSION, "amd64", download_dir=str(tmp_path), fetch=None, cache=cache)


# --- config flags ------------------------------------------------------------------------------


def test_config_renders_stable_text_with_managed_keys():
    kwargs = dict(
        role="server",
        version=VERSION,
        node_ip="10.0.0.2",
        node_name="n2",
        server_url="https://10.0.0.100:6443",
        token="K10abc::server:def",
        tls_sans=["10.0.0.100", "n1", "n2"],
        node_labels=["disk=ssd"],
        extra={"disable": ["traefik"], "tls-san": ["nas.home", "n1"]},
    )
    text = k3s_config.render_config(**kwargs)
    assert text == k3s_config.render_config(**kwargs)
    data = yaml.safe_load(text)
    assert data["server"] == "https://10.0.0.100:6443"
    assert data["tls-san"] == ["10.0.0.100", "n1", "n2", "nas.home"]
    assert data["write-kubeconfig-mode"] == "0600"
    assert "cluster-init" not in data


@pytest.mark.parametrize(
    "key,role,version,message",
    [
        ("tls-sans", "server", VERSION, "did you mean `tls-san`"),
        ("kubelet-args", "agent", VERSION, "did you mean `kubelet-arg`"),
        ("token", "server", VERSION, "set by homecloud"),
        ("disable", "agent", VERSION, "server flag only"),
        ("nonroot-devices", "agent", "v1.30.2+k3s1", "needs k3s 1.31"),
    ],
)
def test_config_key_problems(key, role, version, message):
    problems = k3s_config.check_keys({key: "x"}, version, role)
    assert len(problems) == 1 and message in problems[0]


def test_every_supported_minor_has_a_flag_table():
    for major, minor in k3s_config.SUPPORTED_MINORS:
        flags = k3s_config.known_flags(f"v{major}.{minor}.0+k3s1", "server")
        assert {"tls-san", "cluster-init", "node-ip", "disable"} <= flags
    with pytest.raises(k3s_config.K3sConfigError, match="knows the config flags"):
        k3s_config.known_flags("v1.40.0+k3s1", "server")


# --- kubeconfig merge --------------------------------------------------------------------------

K3S_YAML = """apiVersion: v1
clusters:
- cluster: {certificate-authority-data: Q0E=, server: 'https://127.0.0.1:6443'}
  name: default
contexts:
- context: {cluster: default, user: default}
  name: default
current-context: default
kind: Config
users:
- name: default
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
"""


def test_merge_into_nothing_creates_the_context_on_the_vip():
    out = yaml.safe_load(kubeconfig.merge(None, K3S_YAML, "homecloud", "https://192.168.1.240:6443"))
    assert out["current-context"] == "homecloud"
    assert out["clusters"] == [
        {"name": "homecloud", "cluster": {"certificate-authority-data": "Q0E=", "server": "https://192.168.1.240:6443"}}
    ]
    assert out["users"][0] == {"name": "homecloud", "user": {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZ"}}
    assert out["contexts"] == [{"name": "homecloud", "context": {"cluster": "homecloud", "user": "homecloud"}}]


def test_merge_keeps_other_clusters_and_current_context_and_is_idempotent():
    existing = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "work", "cluster": {"server": "https://w:6443"}}],
            "users": [{"name": "work", "user": {"token": "t"}}],
            "contexts": [{"name": "work", "context": {"cluster": "work", "user": "work"}}],
            "current-context": "work",
        }
    )
    once = kubeconfig.merge(existing, K3S_YAML, "homecloud", "https://192.168.1.240:6443")
    twice = kubeconfig.merge(once, K3S_YAML, "homecloud", "https://192.168.1.240:6443")
    assert once == twice
    data = yaml.safe_load(once)
    assert [c["name"] for c in data["clusters"]] == ["homecloud", "work"]
    assert data["current-context"] == "work"
    # A new VIP replaces the entry, it does not add a second one.
    moved = yaml.safe_load(kubeconfig.merge(once, K3S_YAML, "homecloud", "https://192.168.1.250:6443"))
    assert [c["cluster"]["server"] for c in moved["clusters"] if c["name"] == "homecloud"] == ["https://192.168.1.250:6443"]
    # unmerge takes exactly what merge added.
    back = yaml.safe_load(kubeconfig.unmerge(once, "homecloud"))
    assert [c["name"] for c in back["clusters"]] == ["work"] and back["current-context"] == "work"


def test_merge_refuses_junk():
    with pytest.raises(kubeconfig.KubeconfigError):
        kubeconfig.merge(None, "clusters: []\n", "homecloud", "https://x:6443")
    with pytest.raises(kubeconfig.KubeconfigError):
        kubeconfig.merge("- a list\n", K3S_YAML, "homecloud", "https://x:6443")


def test_server_url_for_ipv6():
    assert kubeconfig.server_url("fd00::10") == "https://[fd00::10]:6443"


# --- readiness with a fake API -----------------------------------------------------------------


def node(name, ready):
    cond = SimpleNamespace(type="Ready", status="True" if ready else "False")
    return SimpleNamespace(metadata=SimpleNamespace(name=name), status=SimpleNamespace(conditions=[cond]))


def deployment(name, want, available):
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name),
        spec=SimpleNamespace(replicas=want),
        status=SimpleNamespace(available_replicas=available, conditions=[]),
    )


class FakeApi:
    """list_node / list_namespaced_deployment returning successive snapshots."""

    def __init__(self, snapshots):
        self.snapshots = list(snapshots)
        self.calls = 0

    def _current(self):
        return self.snapshots[min(self.calls, len(self.snapshots) - 1)]

    def list_node(self):
        snap = self._current()
        if isinstance(snap, Exception):
            self.calls += 1
            raise snap
        return SimpleNamespace(items=snap[0])

    def list_namespaced_deployment(self, namespace):
        assert namespace == "kube-system"
        snap = self._current()
        self.calls += 1
        return SimpleNamespace(items=snap[1])


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_ready_returns_once_everything_is_ready():
    api = FakeApi(
        [
            ConnectionRefusedError("connection refused"),
            ([node("n1", True), node("n2", False)], [deployment("coredns", 1, 0)]),
            ([node("n1", True), node("n2", True)], [deployment("coredns", 1, 1), deployment("traefik", 0, 0)]),
        ]
    )
    clock = FakeClock()
    result = readiness.wait_ready(["n1", "n2"], 600, apis=lambda: (api, api), interval=5, clock=clock, sleep=clock.sleep)
    assert result.ok and clock.now == 10


def test_wait_ready_times_out_with_what_is_missing():
    api = FakeApi([([node("n1", True), node("n2", False)], [deployment("coredns", 1, 0), deployment("metrics-server", 1, 1)])])
    clock = FakeClock()
    with pytest.raises(readiness.ClusterNotReady) as e:
        readiness.wait_ready(["n1", "n2", "n3"], 60, apis=lambda: (api, api), interval=5, clock=clock, sleep=clock.sleep)
    message = str(e.value)
    assert "after 60 s" in message
    assert "nodes not registered: n3" in message and "nodes not Ready: n2" in message
    assert "not available: coredns" in message and "metrics-server" not in message
    assert clock.now == 60


def test_wait_ready_reports_an_api_that_never_answers():
    def broken():
        raise OSError("no route to host")

    clock = FakeClock()
    with pytest.raises(readiness.ClusterNotReady, match="API not answering: OSError: no route to host"):
        readiness.wait_ready(["n1"], 20, apis=broken, interval=5, clock=clock, sleep=clock.sleep)


# --- operations that need other hosts ------------------------------------------------------------


class _Results:
    def __init__(self, error_ops=0):
        self.error_ops = error_ops


class FakeInventory:
    def __init__(self, hosts):
        self.hosts = hosts

    def get_host(self, name, default=None):
        return self.hosts.get(name, default)


class OtherHost:
    """A server whose token fact is read across hosts; records the fact arguments."""

    def __init__(self, name, token):
        self.name = name
        self.token = token
        self.calls = []

    def get_fact(self, fact, **kwargs):
        self.calls.append((fact.__name__, kwargs))
        return self.token


def _run_op(op, kwargs, facts, inventory, executing=True, failed=()):
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra_testing.operations import parse_commands
    from pyinfra_testing.util import FakeState, create_host

    state = FakeState()
    state.inventory = inventory
    state.is_executing = executing
    state.failed_hosts = set(failed)
    state.get_results_for_host = lambda h: _Results(1 if h in failed else 0)
    host = create_host(state, facts=facts)
    host.name = "pi2"
    with ctx_state.use(state), ctx_host.use(host):
        commands = parse_commands(list(op._inner(**kwargs)))
    return commands, host


def test_config_reads_the_generated_token_from_the_first_server_with_sudo():
    from operations import k3s

    first = OtherHost("pi1", "K10feedbeef::server:0123456789abcdef")
    commands, _ = _run_op(
        k3s.config,
        dict(role="server", version=VERSION, node_ip="10.0.0.2", node_name="pi2", server_url="https://10.0.0.100:6443",
             token_from="pi1", sudo_token_read=True),
        {"k3s.K3sFile": {"path=/etc/rancher/k3s/config.yaml": None}},
        FakeInventory({"pi1": first}),
    )
    assert first.calls == [("K3sToken", {"_sudo": True})]
    uploads = [c for c in commands if isinstance(c, list) and c[0] == "upload"]
    assert len(uploads) == 1 and "token: K10feedbeef::server:0123456789abcdef" in uploads[0][1]
    # The token is in no command line.
    assert not any("K10feedbeef" in str(c) for c in commands if c not in uploads)


def test_config_stops_when_the_first_server_has_no_token_at_run_time():
    from pyinfra.api import OperationError

    from operations import k3s

    first = OtherHost("pi1", None)
    with pytest.raises(OperationError, match="pi1 has no /var/lib/rancher/k3s/server/token"):
        _run_op(
            k3s.config,
            dict(role="agent", version=VERSION, node_ip="10.0.0.4", node_name="pi4", server_url="https://10.0.0.100:6443", token_from="pi1"),
            {"k3s.K3sFile": {"path=/etc/rancher/k3s/config.yaml": None}},
            FakeInventory({"pi1": first}),
        )


def test_rolling_restart_stops_after_a_failed_server():
    from pyinfra.api import OperationError

    from operations import k3s

    failed = OtherHost("pi1", None)
    running = {"k3s.K3sService": {"unit=k3s": {"loaded": True, "active": True, "enabled": True, "state": "active"}}}
    with pytest.raises(OperationError, match="rolling k3s restart stopped before pi2: pi1 failed"):
        _run_op(k3s.service, dict(role="server", node_name="pi2", restarted=True, stop_if_failed=["pi1"]),
                running, FakeInventory({"pi1": failed}), failed={failed})
    # With pi1 healthy the restart and the Ready wait are queued.
    commands, _ = _run_op(k3s.service, dict(role="server", node_name="pi2", restarted=True, stop_if_failed=["pi1"]),
                          running, FakeInventory({"pi1": OtherHost("pi1", None)}))
    assert commands[0] == "systemctl restart k3s.service" and "get node pi2" in commands[1]
