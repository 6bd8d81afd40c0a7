"""
The Syncthing programs run on dnas nodes (facts/syncthing.py), run here with the node's home
pointed at a temporary folder: the REST helper (API_CLIENT) against a stand-in REST API on
loopback (`wait` must find a config.xml that Syncthing writes only after the helper started: a
first start generates keys and the config first), and the Node fact's program on a config.xml
and certificate as Syncthing writes them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from facts.syncthing import API_CLIENT

REPO = Path(__file__).resolve().parents[1]

# Runs the helper as on a node, with the dnas user's home pointed at a temporary folder.
RUNNER = textwrap.dedent(
    """
    import sys, types
    home, client = sys.argv[1], open(sys.argv[2]).read()
    fake = types.ModuleType("pwd")
    fake.getpwnam = lambda user: types.SimpleNamespace(pw_dir=home)
    sys.modules["pwd"] = fake
    sys.argv = ["syncthing-api", "dnas"] + sys.argv[3:]
    exec(compile(client, "syncthing-api", "exec"), {"__name__": "__main__"})
    """
)


@pytest.fixture()
def rest_api():
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append((self.path, self.headers.get("X-API-Key")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ping": "pong"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def _config(port: int) -> str:
    return (
        '<configuration version="37"><gui enabled="true" tls="false">'
        f"<address>127.0.0.1:{port}</address><apikey>test-key</apikey></gui></configuration>\n"
    )


def test_wait_finds_a_config_written_after_it_started(tmp_path, rest_api):
    port, seen = rest_api
    client = tmp_path / "syncthing-api"
    client.write_text(API_CLIENT)
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(home), str(client), "wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the helper is polling: no config folder yet
    assert proc.poll() is None, proc.communicate()
    folder = home / ".config" / "syncthing"
    folder.mkdir(parents=True)
    (folder / "config.xml").write_text(_config(port))
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("`syncthing-api dnas wait` did not see the config.xml written after it started")
    assert proc.returncode == 0, err
    assert ("/rest/system/ping", "test-key") in seen


def test_wait_gives_up_with_the_reason(tmp_path):
    # No config ever: the helper's own limit is 90 tries; here only the message is checked, on a
    # helper whose loop is cut to one try.
    client = tmp_path / "syncthing-api"
    assert "for i in range(90):" in API_CLIENT
    client.write_text(API_CLIENT.replace("for i in range(90):", "for i in range(1):"))
    done = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path), str(client), "wait"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Syncthing of dnas does not answer on its REST API" in done.stderr


# The Node fact's program, run on a config.xml and certificate as Syncthing writes them.
CONFIG_XML = """<configuration version="37">
    <folder id="homecloud-data" label="homecloud data" path="{home}/data" type="sendreceive">
        <device id="DHSLZWX-KZ6TVUO-JPSUTMN-OEUJ4LQ-I3AS3KR-SXJR7HX-IBH4M3T-P7AW6QA" introducedBy=""></device>
        <device id="MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD" introducedBy=""></device>
    </folder>
    <folder id="default" label="Default Folder" path="~/Sync" type="sendreceive">
        <device id="DHSLZWX-KZ6TVUO-JPSUTMN-OEUJ4LQ-I3AS3KR-SXJR7HX-IBH4M3T-P7AW6QA" introducedBy=""></device>
    </folder>
    <device id="DHSLZWX-KZ6TVUO-JPSUTMN-OEUJ4LQ-I3AS3KR-SXJR7HX-IBH4M3T-P7AW6QA" name="node1">
        <address>dynamic</address>
    </device>
    <device id="MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD" name="node2">
        <address>tcp://10.0.0.2:22000</address>
        <address>dynamic</address>
    </device>
    <gui enabled="true" tls="false">
        <address>127.0.0.1:8384</address>
        <user>homecloud</user>
        <password>$2a$10$hash</password>
        <apikey>secret-api-key</apikey>
    </gui>
    <options>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <relaysEnabled>false</relaysEnabled>
        <urAccepted>-1</urAccepted>
    </options>
    <defaults>
        <folder id="" label="" path="~" type="sendreceive"></folder>
    </defaults>
</configuration>
"""


def test_node_program_reads_config_xml_and_the_certificate(tmp_path):
    import json

    import yaml

    from facts.syncthing import _NODE_SCRIPT, Node

    device = yaml.safe_load((REPO / "tests/facts/syncthing.DeviceId/running.yaml").read_text())
    home = tmp_path / "home"
    folder = home / ".config" / "syncthing"
    folder.mkdir(parents=True)
    (folder / "config.xml").write_text(CONFIG_XML.format(home=home))
    (folder / "cert.pem").write_text("\n".join(device["output"]) + "\n")
    (home / "data").mkdir()
    (home / "data" / "photo.jpg").write_text("x")
    (home / "Sync").mkdir()
    (home / "Sync" / ".stfolder").mkdir()
    program = tmp_path / "node.py"
    program.write_text(_NODE_SCRIPT)
    done = subprocess.run([sys.executable, "-c", RUNNER, str(home), str(program)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    fact = Node().process(done.stdout.splitlines())
    assert fact["device_id"] == device["fact"]
    assert fact["config"] == f"{folder}/config.xml" and fact["home"] == str(home)
    assert fact["gui"] == {"address": "127.0.0.1:8384", "tls": False, "user": "homecloud", "password_hash": "$2a$10$hash"}
    assert fact["options"]["globalAnnounceEnabled"] == "false" and fact["options"]["natEnabled"] == ""
    assert fact["devices"]["MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD"] == {
        "name": "node2", "addresses": ["tcp://10.0.0.2:22000", "dynamic"],
    }
    assert set(fact["folders"]) == {"homecloud-data", "default"}  # not the <defaults> template
    data = fact["folders"]["homecloud-data"]
    assert data["path"] == f"{home}/data" and data["type"] == "sendreceive" and data["empty"] is False
    assert data["devices"] == sorted(["DHSLZWX-KZ6TVUO-JPSUTMN-OEUJ4LQ-I3AS3KR-SXJR7HX-IBH4M3T-P7AW6QA", "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD"])
    assert fact["folders"]["default"]["empty"] is True  # ~/Sync holds only Syncthing's marker
    assert "secret-api-key" not in done.stdout
    json.loads(done.stdout)  # one JSON document


def test_edit_waits_out_a_restarting_rest_listener(tmp_path):
    """After an edit of the GUI settings Syncthing restarts its REST listener: the next edit
    finds the port closed for a moment and must try again, not fail the deploy."""
    import json
    import socket

    with socket.socket() as probe:  # a free port, closed while the "restart" lasts
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path / "home"
    folder = home / ".config" / "syncthing"
    folder.mkdir(parents=True)
    (folder / "config.xml").write_text(_config(port))
    client = tmp_path / "syncthing-api"
    client.write_text(API_CLIENT)
    config = {"devices": [], "folders": [], "gui": {"address": f"127.0.0.1:{port}"}, "options": {"relaysEnabled": True}}
    put: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps(config).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):  # noqa: N802
            put.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    edit = json.dumps({"options": {"relaysEnabled": False}})
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(home), str(client), "edit", edit], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the helper meets a closed port meanwhile
    assert proc.poll() is None, proc.communicate()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, err
    assert put and put[-1]["options"] == {"relaysEnabled": False}
