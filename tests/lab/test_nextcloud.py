"""
Nextcloud on a running cluster (homecloud/layers/services.py): live tests for a Vagrant lab
(--lab=vagrant) or a real cluster (--inventory) whose inventory has nextcloud_enabled. They skip
on the local nspawn lab: k3s cannot run there and no container image can be had on this machine,
so Nextcloud, MariaDB and Redis never ran here (the manifests are checked offline by
tests/test_services_manifests.py).

Requests go to the VIP (Traefik on every node) with the Nextcloud domain as Host header, TLS
not verified (Traefik's default certificate on a LAN). The tests create a user of their own
(hc-test-<random>) in a group that nextcloud_storages gives a dnas folder to, and delete it
at the end.

    pytest --lab=vagrant tests/lab/test_nextcloud.py
    pytest --inventory inventories/pi.py tests/lab/test_nextcloud.py      # not the destructive ones
"""

from __future__ import annotations

import posixpath
import secrets
import time
import uuid

import pytest

from tests.lab.test_samba import smbclient

TIMEOUT = 120.0
NOT_HERE = (
    "Nextcloud runs on k3s, which cannot run in the local nspawn lab, and no container image can be "
    "downloaded here: run with --lab=vagrant or --inventory (manifests are checked offline)"
)


def _wait(what: str, check, timeout: float = TIMEOUT, interval: float = 2.0):
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)


class Client:
    """HTTP to Nextcloud through Traefik at the VIP, as the given user."""

    def __init__(self, vip: str, domain: str, auth=None):
        import requests
        import urllib3

        urllib3.disable_warnings()
        self.base, self.domain, self.session = f"https://{vip}", domain, requests.Session()
        self.session.verify = False
        self.session.headers["Host"] = domain
        self.session.headers["OCS-APIRequest"] = "true"
        self.session.auth = auth

    def __call__(self, method: str, path: str, **kwargs):
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("allow_redirects", False)
        return self.session.request(method, self.base + path, **kwargs)


@pytest.fixture(scope="module")
def nc(lab_mode, deployed, inventory_hosts):
    if lab_mode == "local":
        pytest.skip(NOT_HERE)
    data = next(h["data"] for h in inventory_hosts if "k3s_servers" in h["groups"])
    if not data.get("nextcloud_enabled"):
        pytest.skip("nextcloud_enabled is off in this inventory")
    storage = next((s for s in data.get("nextcloud_storages") or [] if s.get("groups")), None)
    if storage is None:
        pytest.skip("needs a nextcloud_storages entry that names a group (the test user joins it)")
    admin = Client(data["vip"], data["nextcloud_domain"], (data.get("nextcloud_admin_user", "admin"), data["nextcloud_admin_password"]))
    _wait("status.php answers", lambda: admin("GET", "/status.php").status_code == 200, timeout=1800, interval=10)
    user, password = f"hc-test-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    group = storage["groups"][0]
    admin("POST", "/ocs/v1.php/cloud/groups", data={"groupid": group})  # exists already: fine
    made = admin("POST", "/ocs/v1.php/cloud/users", data={"userid": user, "password": password, "groups[]": group})
    assert made.status_code == 200 and "<statuscode>100</statuscode>" in made.text, made.text
    try:
        yield {"data": data, "admin": admin, "user": user, "as_user": Client(data["vip"], data["nextcloud_domain"], (user, password)), "storage": storage}
    finally:
        admin("DELETE", f"/ocs/v1.php/cloud/users/{user}")


def _dnas_folder(nc, inventory_hosts) -> str:
    node = next(h for h in inventory_hosts if h["name"] == nc["storage"]["node"])
    return posixpath.join(node["data"].get("dnas_path", "/srv/dnas"), nc["storage"]["path"])


def test_status_says_installed(nc):
    status = nc["admin"]("GET", "/status.php").json()
    assert status["installed"] is True and status["maintenance"] is False and status["needsDbUpgrade"] is False
    assert status["version"].startswith("34.")


def test_well_known_redirects(nc):
    for name in ("caldav", "carddav"):
        answer = nc["admin"]("GET", f"/.well-known/{name}")
        assert answer.status_code in (301, 308), answer.status_code
        assert answer.headers["Location"] == f"https://{nc['data']['nextcloud_domain']}/remote.php/dav/"
    assert "max-age=" in nc["admin"]("GET", "/status.php").headers.get("Strict-Transport-Security", "")


def test_webdav_put_get_lands_in_the_dnas_folder_on_both_nodes(nc, inventory_hosts, testinfra_hosts):
    mount, name = nc["storage"]["mount"], f"hc-webdav-{uuid.uuid4().hex}.txt"
    body = f"written through Nextcloud {name}\n".encode()
    url = f"/remote.php/dav/files/{nc['user']}/{mount}/{name}"
    assert nc["as_user"]("PUT", url, data=body).status_code in (201, 204)
    assert nc["as_user"]("GET", url).content == body
    path = posixpath.join(_dnas_folder(nc, inventory_hosts), name)
    owner = nc["data"].get("dnas_user", "dnas")
    for host in testinfra_hosts("dnas"):
        _wait(f"{path} on a dnas node", lambda: host.file(path).exists)
        assert host.file(path).content == body
        assert host.file(path).user == owner, "files written through Nextcloud belong to the dnas owner"
    nc["as_user"]("DELETE", url)


def test_a_file_put_through_samba_shows_in_propfind(nc, inventory_hosts, tmp_path):
    data = nc["data"]
    storage = nc["storage"]
    share = next((s for s in data.get("samba_shares") or [] if storage["path"] == s["path"] or storage["path"].startswith(s["path"].rstrip("/") + "/")), None)
    if share is None or not share.get("valid_users"):
        pytest.skip("no Samba share holds the storage's folder")
    samba_user = share["valid_users"][0]
    node = next(h for h in inventory_hosts if h["name"] == storage["node"])
    name = f"hc-samba-{uuid.uuid4().hex}.txt"
    local = tmp_path / name
    local.write_text("dropped through Samba\n")
    subdir = posixpath.relpath(storage["path"], share["path"])
    where = f'cd "{subdir}"; ' if subdir != "." else ""
    done = smbclient(node["data"]["node_ip"], share["name"], f'{where}put "{local}" "{name}"', samba_user, data["samba_users"][samba_user])
    assert done.returncode == 0, done.stderr
    propfind = lambda: name in nc["as_user"]("PROPFIND", f"/remote.php/dav/files/{nc['user']}/{storage['mount']}/", headers={"Depth": "1"}).text
    _wait("the Samba file in Nextcloud's listing (checked on access)", propfind)


def test_caldav_and_carddav_round_trip(nc):
    user, uid = nc["user"], uuid.uuid4().hex
    event = f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//homecloud//test//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261203T080000Z\r\nDTSTART:20261224T180000Z\r\nSUMMARY:hc test\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    card = f"BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:Ada Lovelace\r\nN:Lovelace;Ada;;;\r\nEND:VCARD\r\n"
    nc["as_user"]("PROPFIND", f"/remote.php/dav/calendars/{user}/", headers={"Depth": "1"})  # creates the defaults
    for path, body, kind in (
        (f"/remote.php/dav/calendars/{user}/personal/{uid}.ics", event, "text/calendar"),
        (f"/remote.php/dav/addressbooks/users/{user}/contacts/{uid}.vcf", card, "text/vcard"),
    ):
        assert nc["as_user"]("PUT", path, data=body.encode(), headers={"Content-Type": kind}).status_code in (201, 204), path
        assert uid in nc["as_user"]("GET", path).text
        assert nc["as_user"]("DELETE", path).status_code == 204


def test_public_share_link_downloads_anonymously(nc):
    import requests

    name = f"hc-share-{uuid.uuid4().hex}.txt"
    assert nc["as_user"]("PUT", f"/remote.php/dav/files/{nc['user']}/{name}", data=b"shared\n").status_code in (201, 204)
    made = nc["as_user"]("POST", "/ocs/v2.php/apps/files_sharing/api/v1/shares", data={"path": f"/{name}", "shareType": 3}, headers={"Accept": "application/json"})
    token = made.json()["ocs"]["data"]["token"]
    anonymous = requests.get(f"https://{nc['data']['vip']}/s/{token}/download", headers={"Host": nc["data"]["nextcloud_domain"]}, verify=False, timeout=60)
    assert anonymous.status_code == 200 and anonymous.content == b"shared\n"


def _kube(inventory_hosts):
    from homecloud.readiness import kubernetes_apis
    import os

    data = inventory_hosts[0]["data"]
    return kubernetes_apis(os.path.expanduser(data["k3s_kubeconfig"]), data["k3s_kubeconfig_context"])


def _nextcloud_pod(core):
    pods = core.list_namespaced_pod("nextcloud", label_selector="app.kubernetes.io/name=nextcloud,app.kubernetes.io/component=app").items
    return pods[0] if pods else None


def _put_home_file(nc, prefix: str, body: bytes) -> str:
    """A new file in the test user's own files (on Nextcloud's volume, not a dnas folder): its DAV path."""
    url = f"/remote.php/dav/files/{nc['user']}/{prefix}-{uuid.uuid4().hex}.txt"
    assert nc["as_user"]("PUT", url, data=body).status_code in (201, 204)
    return url


@pytest.mark.destructive
def test_the_pod_deleted_comes_back_with_its_data(nc, lab_mode, inventory_hosts):
    if lab_mode != "vagrant":
        pytest.skip("deletes the Nextcloud pod: Vagrant lab only")
    url = _put_home_file(nc, "hc-keep", b"kept\n")
    core, _ = _kube(inventory_hosts)
    old = _nextcloud_pod(core)
    core.delete_namespaced_pod(old.metadata.name, "nextcloud")
    _wait("a new Nextcloud pod", lambda: (p := _nextcloud_pod(core)) and p.metadata.uid != old.metadata.uid, timeout=600)
    _wait("Nextcloud answers again", lambda: nc["admin"]("GET", "/status.php").status_code == 200, timeout=900, interval=10)
    assert nc["as_user"]("GET", url).content == b"kept\n"


@pytest.mark.destructive
def test_a_node_down_and_nextcloud_comes_back_elsewhere(nc, lab_mode, inventory_hosts):
    if lab_mode != "vagrant":
        pytest.skip("stops a VM: Vagrant lab only")
    import subprocess

    from tests.lab.conftest import REPO_ROOT

    core, _ = _kube(inventory_hosts)
    node = _nextcloud_pod(core).spec.node_name
    subprocess.run(["vagrant", "halt", node], cwd=REPO_ROOT, check=True, timeout=600)
    try:
        # Kubernetes evicts after 5 minutes; Longhorn then moves the volume (RWO) to the new node.
        _wait("Nextcloud on another node", lambda: (p := _nextcloud_pod(core)) and p.spec.node_name not in (None, node) and p.status.phase == "Running", timeout=1500, interval=15)
        _wait("Nextcloud answers from there", lambda: nc["admin"]("GET", "/status.php").status_code == 200, timeout=900, interval=10)
    finally:
        subprocess.run(["vagrant", "up", node], cwd=REPO_ROOT, check=False, timeout=1800)


@pytest.mark.destructive
def test_turning_nextcloud_off_keeps_its_volumes_and_on_again_its_data(nc, lab_mode, pyinfra_run, inventory_hosts):
    """nextcloud_enabled = False empties homecloud-nextcloud-app.yaml (k3s deletes the workloads)
    and keeps homecloud-nextcloud.yaml (the Namespace and the claims): the same claims stay Bound,
    and turning it on again serves the file written before."""
    if lab_mode != "vagrant":
        pytest.skip("turns Nextcloud off and on: Vagrant lab only")
    url = _put_home_file(nc, "hc-off-on", b"survives off and on\n")
    core, apps = _kube(inventory_hosts)

    def claims():
        return {p.metadata.name: (p.metadata.uid, p.status.phase) for p in core.list_namespaced_persistent_volume_claim("nextcloud").items}

    before = claims()
    assert {"nextcloud-html", "mariadb-data"} <= set(before)
    try:
        off = pyinfra_run("deploys/services.py", "--data", "nextcloud_enabled=False")
        assert off["returncode"] == 0
        _wait("the Nextcloud workloads deleted by k3s", lambda: not apps.list_namespaced_deployment("nextcloud").items, timeout=600, interval=5)
        assert claims() == before, "the same claims, still Bound"
    finally:
        on = pyinfra_run("deploys/services.py")
        assert on["returncode"] == 0
    _wait("Nextcloud answers again", lambda: nc["admin"]("GET", "/status.php").status_code == 200, timeout=1800, interval=10)
    assert nc["as_user"]("GET", url).content == b"survives off and on\n"
    nc["as_user"]("DELETE", url)
