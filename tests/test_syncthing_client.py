"""
The Syncthing REST helper installed on dnas nodes (facts/syncthing.py API_CLIENT), run here
against a stand-in REST API on loopback: `wait` must find a config.xml that Syncthing writes
only after the helper started (a first start generates keys and the config first).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from facts.syncthing import API_CLIENT

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
