"""
The decentralized NAS syncs: every dnas node is peered with every other one and shares the
Syncthing folders; a file written on one node appears on the others (the time is printed), a
delete propagates, and an outside device (a "phone": a plain Syncthing process on a node that
is not in `dnas`, under its own user) given by its device ID in `syncthing_devices` is accepted
and receives the folder.

    pytest --lab=local -s tests/lab/test_dnas_sync.py
    HOMECLOUD_TEST_DEPLOY=deploys/dnas.py pytest --lab=local -s tests/lab/test_dnas_sync.py

The state is read on the nodes through Syncthing's REST API with the API key read on the node
(facts/syncthing.py), never through files the deploy wrote.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import subprocess
import time
import uuid

import pytest

from facts.syncthing import API_CLIENT, FIND_CONFIG
from lab import results

SYNC_TIMEOUT = 90.0


def _rest(host, path: str, user: str):
    """GET a REST path of the Syncthing of `user` on a testinfra host (the key stays there)."""
    script = FIND_CONFIG + f"\ng, url = gui()\nprint(api(url, g.findtext('apikey'), {path!r}).decode())\n"
    out = host.check_output("python3 -c %s %s", script, user)
    return json.loads(out)


def _rest_post(host, path: str, user: str) -> None:
    script = FIND_CONFIG + f"\ng, url = gui()\napi(url, g.findtext('apikey'), {path!r}, 'POST', b'')\n"
    host.check_output("python3 -c %s %s", script, user)


def _wait(what: str, check, timeout: float = SYNC_TIMEOUT, interval: float = 0.2) -> float:
    """Poll check() until it is true; return the seconds it took (fail after timeout)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)


@pytest.fixture(scope="module")
def dnas(deployed, inventory_hosts, testinfra_hosts):
    """[(name, data, testinfra host)] of the dnas nodes (at least two)."""
    names = [h for h in inventory_hosts if "dnas" in h["groups"]]
    hosts = testinfra_hosts("dnas")
    if len(names) < 2:
        pytest.skip("needs two dnas nodes")
    if not names[0]["data"].get("syncthing_enabled", True):
        pytest.skip("syncthing_enabled is off")
    return [(h["name"], h["data"], t) for h, t in zip(names, hosts)]


def _user(data) -> str:
    return data.get("dnas_user", "dnas")


def _folder_path(data) -> str:
    folder = (data.get("syncthing_folders") or [{"id": "homecloud-data", "path": "data"}])[0]
    return posixpath.join(data.get("dnas_path", "/srv/dnas"), folder["path"])


def _folder_id(data) -> str:
    return (data.get("syncthing_folders") or [{"id": "homecloud-data"}])[0]["id"]


def _connected(host, user: str, device_id: str) -> bool:
    conns = _rest(host, "/rest/system/connections", user)["connections"]
    return bool(conns.get(device_id, {}).get("connected"))


def test_full_mesh_and_shared_folders(dnas):
    ids = {name: _rest(t, "/rest/system/status", _user(data))["myID"] for name, data, t in dnas}
    assert len(set(ids.values())) == len(ids), f"two nodes have the same device ID: {ids}"
    for name, data, t in dnas:
        user = _user(data)
        devices = {d["deviceID"] for d in _rest(t, "/rest/config/devices", user)}
        folders = {f["id"]: f for f in _rest(t, "/rest/config/folders", user)}
        assert "default" not in folders, f"{name}: Syncthing's default folder was created"
        for other, other_id in ids.items():
            if other == name:
                continue
            assert other_id in devices, f"{name} does not know {other} ({other_id})"
            for folder in data.get("syncthing_folders") or []:
                shared = {d["deviceID"] for d in folders[folder["id"]]["devices"]}
                assert other_id in shared, f"{name}: folder {folder['id']} not shared with {other}"
        gui = _rest(t, "/rest/config/gui", user)
        assert gui["address"] == data.get("syncthing_gui_address", "127.0.0.1:8384")
        # Syncthing runs as the dnas user.
        assert t.check_output("systemctl show -p User --value syncthing@%s", user) == user
    # Peers connect (printed: the time it took from here).
    (a, adata, at), (b, _bdata, _bt) = dnas[0], dnas[1]
    took = _wait(f"{a} connected to {b}", lambda: _connected(at, _user(adata), ids[b]))
    print(f"\n{a} is connected to {b} (waited {took:.1f} s)")


def test_file_and_delete_propagate(dnas):
    (a, adata, at), (b, bdata, bt) = dnas[0], dnas[1]
    user = _user(adata)
    name = f"probe-{uuid.uuid4().hex[:8]}.txt"
    src, dst = posixpath.join(_folder_path(adata), name), posixpath.join(_folder_path(bdata), name)
    content = f"written on {a} at {time.time()}"
    at.check_output("runuser -u %s -- sh -c %s", user, f"printf '%s' '{content}' > '{src}'")
    took = _wait(f"{name} from {a} on {b}", lambda: bt.file(dst).exists)
    print(f"\nfile written on {a} appeared on {b} after {took:.2f} s (Syncthing's watcher waits ~10 s)")
    _wait(f"{name} complete on {b}", lambda: bt.file(dst).content_string == content, timeout=30)
    assert bt.file(dst).user == _user(bdata), "a synced file must belong to the dnas user"

    at.check_output("rm -f %s", src)
    took = _wait(f"delete of {name} on {b}", lambda: not bt.file(dst).exists)
    print(f"delete on {a} propagated to {b} after {took:.2f} s")

    # With a rescan asked for right away (what the watcher does after its delay): the transfer.
    quick = f"quick-{uuid.uuid4().hex[:8]}.txt"
    at.check_output("runuser -u %s -- sh -c %s", user, f"echo quick > '{posixpath.join(_folder_path(adata), quick)}'")
    start = time.monotonic()
    _rest_post(at, f"/rest/db/scan?folder={_folder_id(adata)}", user)
    _wait(f"{quick} on {b}", lambda: bt.file(posixpath.join(_folder_path(bdata), quick)).exists)
    print(f"with a rescan asked for at once, a file written on {a} was on {b} after {time.monotonic() - start:.2f} s")
    at.check_output("rm -f %s", posixpath.join(_folder_path(adata), quick))

    # And the other way round.
    back = f"back-{uuid.uuid4().hex[:8]}.txt"
    bt.check_output("runuser -u %s -- sh -c %s", _user(bdata), f"echo back > '{posixpath.join(_folder_path(bdata), back)}'")
    took = _wait(f"{back} from {b} on {a}", lambda: at.file(posixpath.join(_folder_path(adata), back)).exists)
    print(f"file written on {b} appeared on {a} after {took:.2f} s")
    bt.check_output("rm -f %s", posixpath.join(_folder_path(bdata), back))
    _wait(f"delete of {back} on {a}", lambda: not at.file(posixpath.join(_folder_path(adata), back)).exists)


PHONE_USER = "hcphone"
PHONE_UNIT = "hc-test-phone"
PHONE_OPTIONS = {
    # The phone stays in the lab: no discovery servers, relays, NAT, reporting or upgrades.
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "crashReportingEnabled": "false",
    "urAccepted": "-1",
    "autoUpgradeIntervalH": "0",
    "startBrowser": "false",
}


@pytest.fixture(scope="module")
def phone(dnas, inventory_hosts, testinfra_hosts, lab_api):
    """A plain Syncthing process under its own user on a node outside `dnas`."""
    others = [h["name"] for h in inventory_hosts if "dnas" not in h["groups"]]
    if not others:
        pytest.skip("needs a node outside the dnas group for the phone")
    host = next(t for h, t in zip(inventory_hosts, testinfra_hosts("all")) if h["name"] == others[0])
    config = f"/home/{PHONE_USER}/.config/syncthing"
    host.check_output(
        "command -v syncthing >/dev/null || { apt-get update -q >/dev/null && "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q syncthing >/dev/null; }"
    )
    host.check_output(f"id {PHONE_USER} >/dev/null 2>&1 || useradd -m -s /bin/sh {PHONE_USER}")
    host.check_output(
        f"test -f {config}/config.xml || runuser -u {PHONE_USER} -- syncthing generate --home={config} --no-default-folder >/dev/null"
    )
    for key, value in PHONE_OPTIONS.items():
        host.check_output(f"sed -i 's#<{key}>[^<]*</{key}>#<{key}>{value}</{key}>#' {config}/config.xml")
    host.run(f"systemctl stop {PHONE_UNIT}")
    host.run(f"systemctl reset-failed {PHONE_UNIT}")
    host.check_output(
        f"systemd-run --unit={PHONE_UNIT} --uid={PHONE_USER} --setenv=HOME=/home/{PHONE_USER} "
        "syncthing serve --no-browser --no-restart --logflags=0"
    )
    host.check_output("python3 -c %s %s wait", API_CLIENT, PHONE_USER)
    phone_id = _rest(host, "/rest/system/status", PHONE_USER)["myID"]
    yield {"id": phone_id, "host": host, "name": others[0]}
    host.run(f"systemctl stop {PHONE_UNIT}")
    # The phone leaves the dnas nodes again (it was added only for this test).
    for _name, data, t in dnas:
        t.run("python3 /usr/local/lib/homecloud/syncthing-api %s edit %s", _user(data), json.dumps({"remove_devices": [phone_id]}))


@pytest.mark.destructive
def test_phone_device_receives_folder(dnas, phone, pyinfra_run):
    (a, adata, at) = dnas[0]
    folder_id = _folder_id(adata)
    devices = json.dumps([{"name": "phone", "id": phone["id"], "folders": [folder_id]}])
    first = pyinfra_run("deploys/dnas.py", "--data", f"syncthing_devices={devices}")
    assert first["returncode"] == 0 and not results.errors(first), results.summary(first)
    start = time.monotonic()
    # Then the phone's user adds the dnas nodes and accepts the folders they share (what one does
    # in the app); the phone dials them, the nodes know it already.
    known = [
        {
            "deviceID": _rest(t, "/rest/system/status", _user(data))["myID"],
            "name": name,
            "addresses": [f"tcp://{data['node_ip']}:22000"],
            "autoAcceptFolders": True,
        }
        for name, data, t in dnas
    ]
    phone["host"].check_output("python3 -c %s %s edit %s", API_CLIENT, PHONE_USER, json.dumps({"devices": known}))

    for name, data, t in dnas:
        shared = {d["deviceID"] for f in _rest(t, "/rest/config/folders", _user(data)) if f["id"] == folder_id for d in f["devices"]}
        assert phone["id"] in shared, f"{name}: folder {folder_id} is not shared with the phone"

    def accepted():
        folders = _rest(phone["host"], "/rest/config/folders", PHONE_USER)
        return next((f for f in folders if f["id"] == folder_id), None)

    took = _wait("the phone accepts the folder", lambda: accepted() is not None)
    path = accepted()["path"].replace("~", f"/home/{PHONE_USER}", 1)
    print(f"\nthe phone ({phone['name']}) has folder {folder_id} at {path} after {took:.2f} s")

    name = f"to-phone-{uuid.uuid4().hex[:8]}.txt"
    at.check_output("runuser -u %s -- sh -c %s", _user(adata), f"echo hello phone > '{posixpath.join(_folder_path(adata), name)}'")
    took = _wait(f"{name} on the phone", lambda: phone["host"].file(posixpath.join(path, name)).exists)
    print(f"file written on {a} reached the phone after {took:.2f} s ({time.monotonic() - start:.1f} s after the deploy)")
    at.check_output("rm -f %s", posixpath.join(_folder_path(adata), name))

    # The same deploy with the same device again changes nothing.
    second = pyinfra_run("deploys/dnas.py", "--data", f"syncthing_devices={devices}")
    assert second["returncode"] == 0 and results.changed(second) == {}, results.summary(second)


# --- The GUI / REST API and the internet features ----------------------------------------------

INTRUDER = "hc-intruder"
INTERNET_OPTIONS = ("globalAnnounceEnabled", "relaysEnabled", "natEnabled")

# Run by a local account that is not the dnas user, as a browser would: load the GUI's page
# (argv[1] = its base URL) to get the CSRF cookie, then GET the REST path argv[2] with that
# token, with the basic-auth user:password read from stdin (empty: none); print the HTTP status
# of the first refusal, or of the REST call. The account cannot read config.xml: no API key.
_AS_INTRUDER = """
import base64, http.cookiejar, ssl, sys, urllib.error, urllib.request as R
creds = sys.stdin.read().strip()
headers = {"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()} if creds else {}
jar = http.cookiejar.CookieJar()
opener = R.build_opener(R.HTTPCookieProcessor(jar), R.HTTPSHandler(context=ssl._create_unverified_context()))
try:
    opener.open(R.Request(sys.argv[1] + "/", headers=headers), timeout=10).read()
    csrf = {c.name: c.value for c in jar if c.name.startswith("CSRF-Token")}
    headers.update({"X-" + k: v for k, v in csrf.items()})
    with opener.open(R.Request(sys.argv[1] + sys.argv[2], headers=headers), timeout=10) as f:
        print(f.status)
except urllib.error.HTTPError as e:
    print(e.code)
"""


CREDS = "/root/.hc-test-gui-creds"


def _put_private(data, text: str, dest: str) -> None:
    """Write `text` to a 0600 file on the node, through ssh's stdin."""
    subprocess.run(
        ["ssh", "-i", data["ssh_key"], "-p", str(data.get("ssh_port", 22)), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", f"{data.get('ssh_user', 'root')}@{data['ssh_hostname']}", f"umask 077; cat > {dest}"],
        input=text, text=True, check=True, timeout=30,
    )


def _config_xml(host, user: str) -> str:
    return host.check_output("python3 -c %s %s", FIND_CONFIG + "\nprint(d + '/config.xml')\n", user)


def _options(host, user: str) -> dict:
    """The <options> of the node's config.xml, read as root straight from the file."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(host.check_output("cat %s", _config_xml(host, user)))
    options = root.find("options")
    return {child.tag: child.text for child in options}


def test_rest_api_refuses_a_local_account_without_the_key_or_password(dnas):
    for name, data, t in dnas:
        user = _user(data)
        t.check_output(f"id {INTRUDER} >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin {INTRUDER}")
        try:
            config = _config_xml(t, user)
            cat = t.run("runuser -u %s -- cat %s", INTRUDER, config)
            assert cat.rc != 0 and "apikey" not in cat.stdout, f"{name}: {INTRUDER} can read {config}"
            address = data.get("syncthing_gui_address", "127.0.0.1:8384")
            scheme = "http" if address.startswith(("127.", "localhost:", "[::1]:")) else "https"

            def status(path: str, creds: str = "") -> int:
                # The credentials reach the node in a root-only file, never on a command line.
                _put_private(data, creds, CREDS)
                base = f"{scheme}://{address}"
                out = t.check_output(f"runuser -u {INTRUDER} -- python3 -c {shlex.quote(_AS_INTRUDER)} {base} {path} < {CREDS}")
                return int(out)

            for path in ("/rest/config", "/rest/system/status", "/rest/config/devices"):
                assert status(path) in (401, 403), f"{name}: {path} answers {INTRUDER} without a key or password"
                assert status(path, "homecloud:wrong-password") in (401, 403), f"{name}: {path} accepts a wrong password"
            # The password of the inventory opens it (the refusals above are the password's).
            with_password = status("/rest/system/status", "homecloud:" + data["syncthing_gui_password"])
            assert with_password == 200, f"{name}: the GUI password of the inventory does not open the REST API ({with_password})"
        finally:
            t.run(f"userdel {INTRUDER}; rm -f {CREDS}")


def test_internet_features_off_by_default(dnas):
    for name, data, t in dnas:
        assert not data.get("syncthing_internet"), "the lab inventory turns syncthing_internet on"
        options = _options(t, _user(data))
        for key in INTERNET_OPTIONS + ("crashReportingEnabled",):
            assert options.get(key) == "false", f"{name}: {key} is {options.get(key)} in config.xml"
        assert options.get("urAccepted") == "-1", f"{name}: usage reporting is {options.get('urAccepted')}"
        assert options.get("localAnnounceEnabled") == "true", f"{name}: LAN discovery is off"


@pytest.mark.destructive
def test_internet_switch_turns_discovery_relays_and_nat_on(dnas, pyinfra_run):
    (a, adata, at) = dnas[0]
    try:
        on = pyinfra_run("deploys/dnas.py", "--limit", a, "--data", "syncthing_internet=True")
        assert on["returncode"] == 0 and not results.errors(on), results.summary(on)
        options = _options(at, _user(adata))
        assert all(options.get(key) == "true" for key in INTERNET_OPTIONS), options
        assert options.get("crashReportingEnabled") == "false" and options.get("urAccepted") == "-1", options
    finally:
        off = pyinfra_run("deploys/dnas.py", "--limit", a)
    assert off["returncode"] == 0 and not results.errors(off), results.summary(off)
    assert all(_options(at, _user(adata)).get(key) == "false" for key in INTERNET_OPTIONS)


def check_arm64_nas(name: str, data: dict, t) -> list[str]:
    """The NAS services of an arm64 dnas node run, each an arm64 binary; returns the units."""
    units = [f"syncthing@{_user(data)}"]
    if data.get("samba_enabled", True):
        units.append("smbd")
    if data.get("nfs_enabled", True) and data.get("nfs_backend") == "ganesha":
        units.append("nfs-ganesha")
    for unit in units:
        assert t.service(unit).is_running, f"{name}: {unit} is not running"
        exe = t.check_output("readlink -f /proc/$(systemctl show -p MainPID --value %s)/exe", unit)
        assert "aarch64" in t.check_output("file -L %s", exe), f"{name}: {unit} does not run an arm64 binary ({exe})"
    return units


def test_arm64_dnas_node_runs_the_nas_and_syncs(dnas):
    """The lab's arm64 node (HOMECLOUD_LAB_ARM64=1, qemu-user; CI's lab has it): arm64 packages,
    the NAS services running, and a file from an amd64 node arrives there."""
    arm = [(n, d, t) for n, d, t in dnas if d.get("node_arch") == "arm64"]
    if not arm:
        pytest.skip("no arm64 dnas node in this lab (HOMECLOUD_LAB_ARM64=1 adds one)")
    name, data, t = arm[0]
    assert t.check_output("dpkg --print-architecture") == "arm64"
    check_arm64_nas(name, data, t)
    (a, adata, at) = next(x for x in dnas if x[1].get("node_arch") != "arm64")
    probe = f"arm-{uuid.uuid4().hex[:8]}.txt"
    src, dst = posixpath.join(_folder_path(adata), probe), posixpath.join(_folder_path(data), probe)
    at.check_output("runuser -u %s -- sh -c %s", _user(adata), f"echo to-arm > '{src}'")
    took = _wait(f"{probe} from {a} on {name}", lambda: t.file(dst).exists and t.file(dst).content_string == "to-arm\n")
    print(f"\nfile written on {a} appeared on the arm64 node {name} after {took:.2f} s")
    at.check_output("rm -f %s", src)
    _wait(f"delete of {probe} on {name}", lambda: not t.file(dst).exists)
