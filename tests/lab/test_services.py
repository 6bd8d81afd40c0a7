"""
The services layer's host side on the lab (homecloud/layers/services.py): with Nextcloud turned
on, deploys/services.py builds the manifest on the controller and writes it, 0600 root, as k3s's
auto-deploy file on every k3s server, the same bytes everywhere and the same as a build of the
same inventory made here; the dnas folders Nextcloud mounts exist, owned by the dnas owner; a
second run changes nothing; turning Nextcloud off removes the file (the folders stay).

k3s does not run in the lab (k3s_install = "off"): nothing applies the manifest here; what the
cluster does with it is for tests/lab/test_nextcloud.py on a Vagrant lab or a real cluster.

    HOMECLOUD_LAB=nc pytest --lab=local tests/lab/test_services.py
"""

from __future__ import annotations

import posixpath

import pytest
import yaml

from lab import results
from tests.lab.conftest import REPO_ROOT

pytestmark = pytest.mark.destructive

MANIFEST = "/var/lib/rancher/k3s/server/manifests/homecloud-nextcloud.yaml"

INVENTORY = '''
"""The lab inventory with Nextcloud on (written by tests/lab/test_services.py)."""
import runpy

from homecloud.model import check_inventory
from homecloud.secrets import secret
from lab import core

_lab = runpy.run_path({lab!r})
_store = "lab-" + core.instance_name() + "-services"  # test-only secrets: not the lab store tests/lab/test_secrets.py compares
_extra = {{
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


@pytest.fixture(scope="module")
def nextcloud_on(deployed, lab_mode, lab_inventory, tmp_path_factory, testinfra_hosts):
    if lab_mode == "inventory":
        pytest.skip("deploys to the hosts: lab only")
    inventory = tmp_path_factory.mktemp("services") / "lab_nextcloud.py"
    inventory.write_text(INVENTORY.format(lab=str(lab_inventory)))
    first = results.run_pyinfra(inventory, REPO_ROOT / "deploys" / "services.py", timeout=900)
    assert first["returncode"] == 0 and not results.errors(first), results.summary(first)
    try:
        yield {"inventory": inventory, "first": first, "hosts": results.inventory_hosts(inventory)}
    finally:
        off = results.run_pyinfra(lab_inventory, REPO_ROOT / "deploys" / "services.py", timeout=900)
        assert off["returncode"] == 0, results.summary(off)
        for server in testinfra_hosts("k3s_servers"):
            assert not server.file(MANIFEST).exists, "turning Nextcloud off removes the manifest"


def test_the_manifest_is_on_every_server_0600_and_the_same_as_a_build_here(nextcloud_on, testinfra_hosts):
    from homecloud.layers import services

    hosts = nextcloud_on["hosts"]
    server_data = next(h["data"] for h in hosts if "k3s_servers" in h["groups"])
    config = services.LAYER.settings(server_data)
    dnas_nodes = {h["name"]: (h["data"]["node_ip"], h["data"].get("dnas_path", "/srv/dnas")) for h in hosts if "dnas" in h["groups"]}
    longhorn = any(h["data"].get("longhorn_enabled", True) for h in hosts if {"k3s_servers", "k3s_agents"} & set(h["groups"]))
    assert not longhorn, "the lab has Longhorn off: Nextcloud's volumes are local-path"
    wanted = services.nextcloud_settings(config, dnas_nodes, longhorn=longhorn)
    assert wanted.storage_class == "local-path"
    expected = services.build_manifest(wanted, services.secrets_of(config))
    servers = testinfra_hosts("k3s_servers")
    assert servers
    for server in servers:
        f = server.file(MANIFEST)
        assert (f.mode, f.user, f.group) == (0o600, "root", "root")
        assert f.content_string == expected
    objects = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(expected) if o}
    assert {("Deployment", "nextcloud"), ("Deployment", "mariadb"), ("Deployment", "redis"), ("CronJob", "mariadb-dump"), ("Ingress", "nextcloud")} <= objects
    assert any(kind == "Secret" for kind, _ in objects)


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
