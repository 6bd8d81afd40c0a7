"""
The platform layer (Traefik tuned, Longhorn with snapshots and backups) on a running cluster.

These need k3s running: on the Vagrant lab (--lab=vagrant, real VMs) or on your cluster
(--inventory inventories/home.py; the destructive ones are skipped there). On the local nspawn
lab k3s cannot run (kubelet needs writable cgroups and /dev/kmsg) and this machine cannot get a
k3s binary or any container image, so every test here skips with that reason; what can be
proven offline is in tests/test_platform_manifests.py and tests/test_platform_deploy.py.

- the HelmChart install jobs succeed and the add-ons' Deployments/DaemonSets roll out;
- every server holds the same manifests, 0600, and a second deploy writes nothing;
- HTTPS on the VIP answers (Traefik) and plain HTTP is redirected to HTTPS;
- a Longhorn volume with 2 replicas keeps its data while a node holding a replica is stopped;
- a Longhorn backup to the backup target completes and restores into a new volume with the
  same content (when platform_backup_target is set);
- Grafana (monitoring) answers on the VIP under grafana.<domain>, refuses anonymous access, logs
  the admin in with the password of the secret store, and shows node-exporter metrics of every node;
- the Longhorn UI answers only with its password (basic auth), when it is exposed;
- the Dashboard answers on dashboard.<domain>; `python -m homecloud.platform token` prints an admin
  token that may delete pods, `--read-only` one that may list but not delete;
- Portainer logs the admin in with the password of the secret store (when it is on);
- disabling an add-on removes what it created, and enabling it again brings it back.
"""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from lab import results

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = "/var/lib/rancher/k3s/server/manifests"
LONGHORN = ("longhorn.io", "v1beta2", "longhorn-system")
TEST_NS = "homecloud-test"
NO_ROUTE_HOST = "homecloud-test.invalid"  # a name no Ingress serves: Traefik answers itself


@pytest.fixture(scope="module")
def platform(lab_mode, deployed, inventory_hosts):
    if lab_mode == "local":
        pytest.skip(
            "k3s cannot run in the local nspawn lab (kubelet needs writable cgroups and /dev/kmsg) and no k3s "
            "binary or container image can be had here: run with --lab=vagrant or --inventory"
        )
    servers = [h for h in inventory_hosts if "k3s_servers" in h["groups"]]
    if not servers or servers[0]["data"].get("k3s_install") == "off":
        pytest.skip("k3s_install is off in this inventory: no platform")
    if servers[0]["data"].get("platform_enabled") is False:
        pytest.skip("platform_enabled is False in this inventory")
    from kubernetes import client, config

    from homecloud.layers import platform as layer
    from homecloud.schema import Cluster, HostSpec

    data = servers[0]["data"]
    cluster = Cluster([HostSpec(h["name"], tuple(h["groups"]), h["data"]) for h in inventory_hosts])
    api = config.new_client_from_config(config_file=os.path.expanduser(data["k3s_kubeconfig"]), context=data["k3s_kubeconfig_context"])
    return {
        "addons": list(layer.addons_of(cluster)),
        "settings": layer.settings_for(cluster),
        "vip": data["vip"],
        "servers": [h["name"] for h in servers],
        "core": client.CoreV1Api(api),
        "apps": client.AppsV1Api(api),
        "batch": client.BatchV1Api(api),
        "custom": client.CustomObjectsApi(api),
        "storage": client.StorageV1Api(api),
    }


def _wait(what: str, probe, timeout: float = 600, interval: float = 5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as e:  # the API or the object is not there yet
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last error: {last})")


def test_install_jobs_succeed_and_addons_roll_out(platform):
    from homecloud.readiness import wait_platform

    wait_platform(platform["addons"], 900, apis=lambda: (platform["batch"], platform["apps"]))


def test_every_server_has_the_same_manifests_0600(platform, testinfra_hosts):
    seen = {}
    for host in testinfra_hosts("k3s_servers"):
        out = host.run(f"cd {MANIFESTS} && for f in homecloud-*.yaml; do printf '%s %s ' \"$f\" \"$(stat -c %a \"$f\")\"; sha256sum < \"$f\"; done").stdout
        seen[host.backend.hostname] = sorted(out.split("\n"))
    first = next(iter(seen.values()))
    assert all(v == first for v in seen.values()), seen
    for addon in platform["addons"]:
        assert any(line.startswith(f"homecloud-{addon}.yaml 600 ") for line in first), first


def test_second_deploy_writes_nothing(platform, lab_mode, pyinfra_run):
    if lab_mode == "inventory":
        pytest.skip("no deploy against a real cluster (--inventory): checks only")
    again = pyinfra_run("deploys/platform.py")
    assert again["returncode"] == 0, results.summary(again)
    assert results.changed(again) == {}, results.summary(again)


def _request(vip: str, port: int, path: str = "/") -> http.client.HTTPResponse:
    if port == 443:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # self-signed on a LAN cluster; the name is checked below for acme
        conn = http.client.HTTPSConnection(vip, 443, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(vip, 80, timeout=10)
    conn.request("GET", path, headers={"Host": NO_ROUTE_HOST})
    return conn.getresponse()


def test_https_on_the_vip_and_http_redirects(platform):
    if "traefik" not in platform["addons"]:
        pytest.skip("platform_traefik is False")
    response = _wait("HTTP answer on the VIP", lambda: _request(platform["vip"], 80), timeout=120)
    assert response.status in (301, 302, 307, 308), response.status
    assert response.getheader("Location", "").startswith("https://"), response.getheaders()
    secure = _wait("HTTPS answer on the VIP", lambda: _request(platform["vip"], 443), timeout=120)
    assert secure.status == 404  # Traefik itself: no route for this name, over TLS


def _namespace(platform):
    from kubernetes import client

    try:
        platform["core"].create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=TEST_NS)))
    except Exception as e:
        if getattr(e, "status", None) != 409:
            raise


def _pvc(platform, name: str, storage_class: str, volume_name: str | None = None) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": TEST_NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class, "resources": {"requests": {"storage": "1Gi"}}},
    }
    if volume_name:
        body["spec"]["volumeName"] = volume_name
    platform["core"].create_namespaced_persistent_volume_claim(TEST_NS, body)


def _pod(platform, name: str, claim: str, command: str, node: str | None = None) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": TEST_NS},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "c", "image": "busybox:1.37.0", "command": ["sh", "-c", command],
                "volumeMounts": [{"name": "v", "mountPath": "/data"}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
            }],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }
    if node:
        body["spec"]["nodeName"] = node
    platform["core"].create_namespaced_pod(TEST_NS, body)


def _pod_output(platform, name: str, timeout: float = 600) -> str:
    def done():
        pod = platform["core"].read_namespaced_pod(name, TEST_NS)
        if pod.status.phase == "Failed":
            raise AssertionError(platform["core"].read_namespaced_pod_log(name, TEST_NS))
        return pod.status.phase == "Succeeded"

    _wait(f"pod {name} done", done, timeout=timeout)
    return platform["core"].read_namespaced_pod_log(name, TEST_NS)


def _volume_of(platform, claim: str) -> str:
    return _wait(f"PVC {claim} bound", lambda: platform["core"].read_namespaced_persistent_volume_claim(claim, TEST_NS).spec.volume_name)


@pytest.mark.destructive
def test_two_replica_volume_survives_a_node_stop(platform, lab_mode):
    if lab_mode != "vagrant":
        pytest.skip("stops a VM: Vagrant lab only")
    if "longhorn" not in platform["addons"] or len(platform["settings"].longhorn_nodes) < 3:
        pytest.skip("needs Longhorn on 3 nodes (2 replicas, one node stopped, the pod moved to a third)")
    _namespace(platform)
    token = uuid.uuid4().hex
    sc = f"hc-test-2r-{token[:6]}"
    platform["storage"].create_storage_class({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": sc},
        "provisioner": "driver.longhorn.io", "reclaimPolicy": "Delete",
        "parameters": {"numberOfReplicas": "2", "staleReplicaTimeout": "30"},
    })
    stopped = None
    try:
        _pvc(platform, "two", sc)
        _pod(platform, "writer", "two", f"echo {token} > /data/token && sync && cat /data/token")
        assert _pod_output(platform, "writer").strip() == token
        volume = _volume_of(platform, "two")
        group, version, ns = LONGHORN
        replicas = platform["custom"].list_namespaced_custom_object(group, version, ns, "replicas", label_selector=f"longhornvolume={volume}")["items"]
        nodes = sorted({r["spec"]["nodeID"] for r in replicas})
        assert len(nodes) == 2, replicas
        platform["core"].delete_namespaced_pod("writer", TEST_NS)
        stopped = nodes[0]
        subprocess.run(["vagrant", "halt", stopped], cwd=REPO_ROOT, check=True, timeout=600)
        reader_node = next(n for n in platform["settings"].longhorn_nodes if n != stopped)
        _pod(platform, "reader", "two", "cat /data/token", node=reader_node)
        assert _pod_output(platform, "reader", timeout=900).strip() == token
    finally:
        if stopped:
            subprocess.run(["vagrant", "up", stopped], cwd=REPO_ROOT, check=False, timeout=1200)
        platform["core"].delete_namespace(TEST_NS)
        platform["storage"].delete_storage_class(sc)


@pytest.mark.destructive
def test_backup_completes_and_restores_into_a_new_volume(platform, lab_mode):
    if "longhorn" not in platform["addons"]:
        pytest.skip("platform_longhorn is off")
    if not platform["settings"].longhorn_backup_target:
        pytest.skip("no platform_backup_target in this inventory")
    group, version, ns = LONGHORN
    custom = platform["custom"]
    _namespace(platform)
    token = uuid.uuid4().hex
    restored = f"hc-restore-{token[:8]}"
    try:
        _pvc(platform, "src", "longhorn")
        _pod(platform, "writer", "src", f"echo {token} > /data/token && sync")
        _pod_output(platform, "writer")
        volume = _volume_of(platform, "src")
        platform["core"].delete_namespaced_pod("writer", TEST_NS)
        # Longhorn backs up attached volumes; a reader pod keeps it attached while the backup runs.
        _pod(platform, "holder", "src", "sleep 600")
        custom.create_namespaced_custom_object(group, version, ns, "snapshots", {
            "apiVersion": f"{group}/{version}", "kind": "Snapshot",
            "metadata": {"name": f"snap-{token[:8]}", "namespace": ns}, "spec": {"volume": volume, "createSnapshot": True},
        })
        _wait("snapshot ready", lambda: custom.get_namespaced_custom_object(group, version, ns, "snapshots", f"snap-{token[:8]}").get("status", {}).get("readyToUse"))
        custom.create_namespaced_custom_object(group, version, ns, "backups", {
            "apiVersion": f"{group}/{version}", "kind": "Backup",
            "metadata": {"name": f"backup-{token[:8]}", "namespace": ns}, "spec": {"snapshotName": f"snap-{token[:8]}"},
        })
        backup = _wait(
            "backup completed",
            lambda: (lambda b: b if b.get("status", {}).get("state") == "Completed" else None)(
                custom.get_namespaced_custom_object(group, version, ns, "backups", f"backup-{token[:8]}")
            ),
            timeout=900,
        )
        url = backup["status"]["url"]
        custom.create_namespaced_custom_object(group, version, ns, "volumes", {
            "apiVersion": f"{group}/{version}", "kind": "Volume",
            "metadata": {"name": restored, "namespace": ns},
            "spec": {"fromBackup": url, "numberOfReplicas": 1, "size": str(1024 ** 3), "frontend": "blockdev"},
        })
        _wait("restore done", lambda: custom.get_namespaced_custom_object(group, version, ns, "volumes", restored).get("status", {}).get("restoreRequired") is False, timeout=900)
        platform["core"].create_persistent_volume({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": restored},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "csi": {"driver": "driver.longhorn.io", "fsType": "ext4", "volumeHandle": restored},
            },
        })
        _pvc(platform, "restored", "", volume_name=restored)  # static binding to the restored volume
        _pod(platform, "reader", "restored", "cat /data/token")
        assert _pod_output(platform, "reader", timeout=900).strip() == token
    finally:
        platform["core"].delete_namespace(TEST_NS)


@pytest.mark.destructive
def test_disabling_an_addon_removes_it_and_enabling_brings_it_back(platform, lab_mode, pyinfra_run):
    if lab_mode != "vagrant":
        pytest.skip("changes the cluster's add-ons: Vagrant lab only")
    if "traefik" not in platform["addons"]:
        pytest.skip("platform_traefik is already False")
    custom = platform["custom"]

    def config_exists() -> bool:
        try:
            custom.get_namespaced_custom_object("helm.cattle.io", "v1", "kube-system", "helmchartconfigs", "traefik")
            return True
        except Exception as e:
            if getattr(e, "status", None) == 404:
                return False
            raise

    assert config_exists()
    off = pyinfra_run("deploys/platform.py", "--data", "platform_traefik=False")
    assert off["returncode"] == 0, results.summary(off)
    _wait("k3s pruned the HelmChartConfig of the disabled add-on", lambda: not config_exists(), timeout=180)
    on = pyinfra_run("deploys/platform.py")
    assert on["returncode"] == 0, results.summary(on)
    _wait("the add-on is back", config_exists, timeout=180)


def test_grafana_login_and_node_metrics(platform, inventory_hosts):
    if "monitoring" not in platform["addons"]:
        pytest.skip("platform_monitoring is off in this inventory")
    import base64
    import json

    data = next(h for h in inventory_hosts if "k3s_servers" in h["groups"])["data"]
    host = f"grafana.{platform['settings'].domain}"
    auth = base64.b64encode(f"admin:{data['platform_grafana_admin_password']}".encode()).decode()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # Traefik's self-signed default certificate on a LAN cluster

    def get(path: str, authorization: str | None = auth):
        conn = http.client.HTTPSConnection(platform["vip"], 443, timeout=20, context=context)
        headers = {"Host": host}
        if authorization:
            headers["Authorization"] = f"Basic {authorization}"
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()

    assert _wait("Grafana behind the ingress", lambda: get("/api/health")[0] == 200, timeout=600)
    assert get("/api/user", authorization=None)[0] == 401
    status, body = get("/api/user")
    assert status == 200 and json.loads(body)["login"] == "admin"
    nodes = {h["name"] for h in inventory_hosts if {"k3s_servers", "k3s_agents"} & set(h["groups"])}

    def node_metrics():
        status, body = get("/api/datasources/proxy/uid/prometheus/api/v1/query?query=node_uname_info")
        seen = {r["metric"].get("nodename") for r in json.loads(body)["data"]["result"]} if status == 200 else set()
        return seen >= nodes and seen

    _wait(f"node-exporter metrics of every node ({', '.join(sorted(nodes))}) through Grafana", node_metrics, timeout=600)


def test_longhorn_ui_only_with_the_password(platform, inventory_hosts):
    if not platform["settings"].longhorn_ui:
        pytest.skip("platform_longhorn_ui_password is not set: the Longhorn UI is not exposed")
    import base64

    data = next(h for h in inventory_hosts if "k3s_servers" in h["groups"])["data"]
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def status(authorization=None) -> int:
        conn = http.client.HTTPSConnection(platform["vip"], 443, timeout=20, context=context)
        headers = {"Host": f"longhorn.{platform['settings'].domain}"}
        if authorization:
            headers["Authorization"] = "Basic " + base64.b64encode(authorization.encode()).decode()
        conn.request("GET", "/", headers=headers)
        return conn.getresponse().status

    assert _wait("the Longhorn UI behind the ingress", lambda: status(f"admin:{data['platform_longhorn_ui_password']}") == 200, timeout=600)
    assert status() == 401 and status("admin:wrong-password") == 401


def test_dashboard_token_command_and_ui(platform, inventory_hosts):
    if "dashboard" not in platform["addons"]:
        pytest.skip("platform_dashboard is off in this inventory")
    import sys

    from kubernetes import client

    data = next(h for h in inventory_hosts if "k3s_servers" in h["groups"])["data"]

    def token(*extra) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "homecloud.platform", "token", "--kubeconfig", data["k3s_kubeconfig"], "--context", data["k3s_kubeconfig_context"], *extra],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return done.stdout.strip()

    def can(bearer: str, verb: str) -> bool:
        config = client.Configuration()
        base = platform["core"].api_client.configuration
        config.host, config.ssl_ca_cert = base.host, base.ssl_ca_cert
        config.api_key = {"authorization": f"Bearer {bearer}"}
        review = client.AuthorizationV1Api(client.ApiClient(config)).create_self_subject_access_review(
            {"spec": {"resourceAttributes": {"verb": verb, "resource": "pods", "namespace": "default"}}}
        )
        return review.status.allowed

    admin, viewer = token(), token("--read-only", "--minutes", "10")
    assert can(admin, "delete") and can(viewer, "list") and not can(viewer, "delete")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def ui() -> bool:
        conn = http.client.HTTPSConnection(platform["vip"], 443, timeout=20, context=context)
        conn.request("GET", "/", headers={"Host": f"dashboard.{platform['settings'].domain}"})
        return conn.getresponse().status == 200

    _wait("the Dashboard behind the ingress", ui, timeout=600)


def test_portainer_login(platform, inventory_hosts):
    if "portainer" not in platform["addons"]:
        pytest.skip("platform_portainer is off in this inventory")
    import json

    data = next(h for h in inventory_hosts if "k3s_servers" in h["groups"])["data"]
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def login(password: str) -> int:
        conn = http.client.HTTPSConnection(platform["vip"], 443, timeout=20, context=context)
        body = json.dumps({"username": "admin", "password": password})
        conn.request("POST", "/api/auth", body=body, headers={"Host": f"portainer.{platform['settings'].domain}", "Content-Type": "application/json"})
        return conn.getresponse().status

    assert _wait("Portainer login with the store's password", lambda: login(data["platform_portainer_admin_password"]) == 200, timeout=600)
    assert login("wrong-password-123") in (401, 422)
