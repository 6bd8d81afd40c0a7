"""
Contacts and calendars between peers (homecloud/layers/davsync.py), proven on the lab: vdirsyncer
on the first dnas node pairs a user's address books and calendars with .vcf/.ics files in the
Syncthing-shared data folder; Syncthing carries them to the other dnas node and back.

Nextcloud cannot run here (no k3s, no container image), so the DAV server is a stand-in:
Radicale (Debian's package), installed and started ONLY by this test on the first dnas node
(127.0.0.1:5232, its own htpasswd with the user's app password read from vdirsyncer's config on
the node), stopped and removed at the end. What is proven:

1. a contact and an event created over CardDAV/CalDAV appear as .vcf/.ics files on the OTHER
   dnas node, owned by the dnas owner;
2. the contact edited as a file there reaches the DAV server;
3. a second vdirsyncer run changes nothing (files and server ETags the same, nothing copied),
   and a second deploy changes nothing.

    HOMECLOUD_LAB=nc pytest --lab=local -s tests/lab/test_contacts.py
"""

from __future__ import annotations

import re
import textwrap
import time
import uuid

import pytest

from lab import results
from tests.lab.conftest import REPO_ROOT

pytestmark = pytest.mark.destructive

RADICALE = "/run/homecloud-test-radicale"
UNIT = "homecloud-test-radicale"
SYNC_UNIT = "homecloud-vdirsyncer.service"
USER = "alice"
SYNC_TIMEOUT = 120.0

INVENTORY = '''
"""The lab inventory with davsync on the first dnas node (written by tests/lab/test_contacts.py)."""
import runpy

from homecloud.model import check_inventory
from homecloud.secrets import secret
from lab import core

_lab = runpy.run_path({lab!r})
_store = "lab-" + core.instance_name() + "-services"  # test-only secrets: not the lab store tests/lab/test_secrets.py compares
_extra = {{
    "dav_sync_node": _lab["dnas"][0],
    "dav_sync_url": "http://127.0.0.1:5232/",
    "dav_sync_users": [{{"user": {user!r}, "password": secret("dav_{user}", length=24, store=_store), "folder": "data/dav/{user}"}}],
    "dav_sync_interval": "1h",
}}


def _with(entries):
    return [(name, {{**data, **_extra}} if name in _lab["dnas"] else data) for name, data in entries]


k3s_servers = _with(_lab["k3s_servers"])
k3s_agents = _with(_lab["k3s_agents"])
dnas = list(_lab["dnas"])

check_inventory(globals(), __file__)
'''

# Run on the DAV node: Radicale's config and users, and a netrc for curl, from vdirsyncer's
# config (the app password is never on a command line).
SETUP = textwrap.dedent(
    """
    import os, re
    text = open("/etc/homecloud-vdirsyncer/config").read()
    user = re.search(r'^username = "([^"]+)"', text, re.M).group(1)
    password = re.search(r'^password = "([^"]+)"', text, re.M).group(1)
    root = "{root}"
    os.makedirs(root + "/collections", mode=0o700, exist_ok=True)
    os.umask(0o077)
    open(root + "/users", "w").write(f"{{user}}:{{password}}\\n")
    open(root + "/netrc", "w").write(f"machine 127.0.0.1 login {{user}} password {{password}}\\n")
    open(root + "/config", "w").write(
        "[server]\\nhosts = 127.0.0.1:5232\\n"
        "[auth]\\ntype = htpasswd\\nhtpasswd_filename = " + root + "/users\\nhtpasswd_encryption = plain\\n"
        "[storage]\\nfilesystem_folder = " + root + "/collections\\n"
        "[rights]\\ntype = owner_only\\n"
    )
    """
).format(root=RADICALE)


def _wait(what: str, check, timeout: float = SYNC_TIMEOUT, interval: float = 0.5) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - start


def _dav(host, method: str, path: str, body: str = "", content_type: str = "text/plain", depth: str | None = None) -> str:
    """An HTTP request to Radicale from the node itself, credentials from the netrc file."""
    headers = ["-H", f"Content-Type: {content_type}"] + (["-H", f"Depth: {depth}"] if depth else [])
    args = ["-sS", "--fail-with-body", "--netrc-file", f"{RADICALE}/netrc", "-X", method, *headers, "--data-binary", "@-", f"http://127.0.0.1:5232{path}"]
    quoted = " ".join("%s" for _ in args)
    # curl runs on the node (installed there by the fixture), not on the controller.
    out = host.run(f"printf '%%s' %s | curl {quoted}", body, *args)
    assert out.rc == 0, f"{method} {path}: {out.stdout} {out.stderr}"
    return out.stdout


def _sync(host) -> str:
    """One vdirsyncer run (the unit the timer starts); its journal."""
    out = host.run("systemctl start %s", SYNC_UNIT)
    invocation = host.check_output("systemctl show -p InvocationID --value %s", SYNC_UNIT)
    journal = host.check_output("journalctl -o cat _SYSTEMD_INVOCATION_ID=%s", invocation)
    assert out.rc == 0, f"vdirsyncer failed:\n{journal}\n{out.stderr}"
    return journal


def _tree(host, path: str) -> str:
    return host.check_output("cd %s && find . -type f ! -path './.stfolder*' -exec sha256sum {} + | sort", path)


def _etags(host) -> list[str]:
    out = ""
    for collection in ("contacts", "calendar"):
        out += _dav(host, "PROPFIND", f"/{USER}/{collection}/", '<propfind xmlns="DAV:"><prop><getetag/></prop></propfind>', "application/xml", depth="1")
    return sorted(re.findall(r"<[^>]*getetag>([^<]+)<", out))


@pytest.fixture(scope="module")
def dav_lab(deployed, lab_mode, lab_inventory, inventory_hosts, testinfra_hosts, tmp_path_factory):
    if lab_mode == "inventory":
        pytest.skip("installs Radicale and deploys vdirsyncer: lab only")
    names = [h for h in inventory_hosts if "dnas" in h["groups"]]
    if len(names) < 2:
        pytest.skip("needs two dnas nodes")
    node1, node2 = testinfra_hosts("dnas")[:2]
    data = names[0]["data"]
    inventory = tmp_path_factory.mktemp("contacts") / "lab_contacts.py"
    inventory.write_text(INVENTORY.format(lab=str(lab_inventory), user=USER))
    first = results.run_pyinfra(inventory, REPO_ROOT / "deploys" / "davsync.py", timeout=900)
    assert first["returncode"] == 0 and not results.errors(first), results.summary(first)
    # The stand-in DAV server, on the vdirsyncer node only, for this test only.
    node1.check_output("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends radicale curl >/dev/null")
    node1.run("systemctl disable --now radicale.service")
    node1.check_output("python3 -c %s", SETUP)
    node1.check_output("systemd-run --unit=%s --property=Restart=no python3 -m radicale --config %s/config", UNIT, RADICALE)
    _wait("Radicale answers", lambda: node1.run("curl -s -o /dev/null http://127.0.0.1:5232/").rc == 0, timeout=30)
    try:
        yield {
            "inventory": inventory,
            "first": first,
            "node1": node1,
            "node2": node2,
            "user": data.get("dnas_user", "dnas"),
            "folder": f"{data.get('dnas_path', '/srv/dnas')}/data/dav/{USER}",
        }
    finally:
        node1.run("systemctl stop %s", UNIT)
        node1.run("rm -rf %s", RADICALE)
        node1.run("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q radicale >/dev/null")
        # The plain lab inventory has no dav_sync_node: the layer removes vdirsyncer's timer, units and config.
        cleanup = results.run_pyinfra(lab_inventory, REPO_ROOT / "deploys" / "davsync.py", timeout=900)
        assert cleanup["returncode"] == 0, results.summary(cleanup)
        assert not node1.file("/etc/homecloud-vdirsyncer/config").exists


def test_vdirsyncer_is_deployed_with_a_private_config(dav_lab):
    node1 = dav_lab["node1"]
    config = node1.file("/etc/homecloud-vdirsyncer/config")
    assert (config.mode, config.user) == (0o600, dav_lab["user"])
    assert node1.service("homecloud-vdirsyncer.timer").is_enabled
    assert node1.service("homecloud-vdirsyncer.timer").is_running
    assert not dav_lab["node2"].file("/etc/homecloud-vdirsyncer/config").exists


def test_dav_items_become_files_on_the_other_node_and_edits_come_back(dav_lab):
    node1, node2, folder, owner = dav_lab["node1"], dav_lab["node2"], dav_lab["folder"], dav_lab["user"]
    contact_uid, event_uid = f"hc-contact-{uuid.uuid4()}", f"hc-event-{uuid.uuid4()}"
    # 1. A contact and an event created over DAV.
    _dav(node1, "MKCOL", f"/{USER}/contacts/",
         '<?xml version="1.0"?><mkcol xmlns="DAV:" xmlns:C="urn:ietf:params:xml:ns:carddav"><set><prop>'
         "<resourcetype><collection/><C:addressbook/></resourcetype><displayname>Contacts</displayname></prop></set></mkcol>",
         "application/xml")
    _dav(node1, "MKCALENDAR", f"/{USER}/calendar/")
    vcard = f"BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{contact_uid}\r\nFN:Ada Lovelace\r\nN:Lovelace;Ada;;;\r\nEMAIL:ada@example.org\r\nEND:VCARD\r\n"
    event = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//homecloud//test//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{event_uid}\r\nDTSTAMP:20261203T080000Z\r\nDTSTART:20261224T180000Z\r\nDTEND:20261224T200000Z\r\n"
        "SUMMARY:Family dinner\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    _dav(node1, "PUT", f"/{USER}/contacts/{contact_uid}.vcf", vcard, "text/vcard")
    _dav(node1, "PUT", f"/{USER}/calendar/{event_uid}.ics", event, "text/calendar")
    _sync(node1)

    def found(host, uid):
        out = host.run("grep -rl %s %s", uid, folder)
        return out.stdout.split() if out.rc == 0 else []

    took = _wait("the contact and the event reach the other dnas node", lambda: found(node2, contact_uid) and found(node2, event_uid))
    print(f"\nDAV -> vdirsyncer -> Syncthing -> other node: {took:.1f} s")
    [vcf], [ics] = found(node2, contact_uid), found(node2, event_uid)
    assert vcf.startswith(f"{folder}/contacts/") and vcf.endswith(".vcf")
    assert ics.startswith(f"{folder}/calendars/") and ics.endswith(".ics")
    for path in (vcf, ics):
        assert node2.file(path).user == owner, path
    assert "Family dinner" in node2.file(ics).content_string

    # 2. The contact edited as a file on the other node reaches the DAV server.
    edited = vcard.replace("FN:Ada Lovelace", "FN:Ada King").replace("N:Lovelace;Ada", "N:King;Ada")
    node2.check_output("python3 -c %s %s %s", "import sys; open(sys.argv[1], 'w', newline='').write(sys.argv[2])", vcf, edited)
    assert node2.file(vcf).user == owner
    _wait("the edit reaches the vdirsyncer node", lambda: "Ada King" in node1.run("cat %s", vcf).stdout)
    journal = _sync(node1)
    served = _dav(node1, "GET", f"/{USER}/contacts/{contact_uid}.vcf")
    assert "FN:Ada King" in served, (served, journal)

    # 3. A second run changes nothing, on either side; so does a second deploy.
    files_before, etags_before = _tree(node1, folder), _etags(node1)
    journal = _sync(node1)
    assert (_tree(node1, folder), _etags(node1)) == (files_before, etags_before)
    assert not re.search(r"Copying|Updating|Deleting", journal), journal
    again = results.run_pyinfra(dav_lab["inventory"], REPO_ROOT / "deploys" / "davsync.py", timeout=900)
    assert again["returncode"] == 0 and results.changed(again) == {}, results.changed(again)
