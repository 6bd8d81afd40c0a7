"""
The lab's apt proxy (lab/aptproxy.py) against a stand-in archive on loopback: one download per
file however many nodes ask at once, nothing half-written served, every request answered
completely (no hang), only the archive reachable.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab import aptproxy

ARCHIVE = "http://deb.debian.org/debian"
INRELEASE = ARCHIVE + "/dists/bookworm/InRelease"
DEB = ARCHIVE + "/pool/main/h/hello/hello_2.10-3_amd64.deb"


class Upstream:
    """A stand-in mirror: serves `files`, counts GETs per path, optionally slow or broken."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}
        self.delay = 0.0
        self.truncate: set[str] = set()
        self.lock = threading.Lock()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                with upstream.lock:
                    upstream.gets[self.path] = upstream.gets.get(self.path, 0) + 1
                time.sleep(upstream.delay)
                body = upstream.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in upstream.truncate:
                    self.wfile.write(body[: len(body) // 3])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/debian"
        threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True).start()

    def count(self, url: str) -> int:
        return self.gets.get("/debian" + url[len(ARCHIVE):], 0)

    def put(self, url: str, body: bytes) -> None:
        self.files["/debian" + url[len(ARCHIVE):]] = body

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    up = Upstream()
    yield up
    up.stop()


def _proxy(upstream: Upstream, root: Path, ttl: float = 0.0, log: Path | None = None):
    cache = aptproxy.ArchiveCache(root, [ARCHIVE], index_ttl=ttl, prefix_map={ARCHIVE: upstream.url},
                                  upstream_timeout=5)
    return cache, aptproxy.serving(cache, "127.0.0.1", log)


def _get(proxy_url: str, url: str, method: str = "GET", timeout: float = 30) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy_url}))
    try:
        with opener.open(urllib.request.Request(url, method=method), timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_many_nodes_refreshing_the_same_index_cause_one_download(upstream, tmp_path):
    """The apt-cacher-ng failure case: 20 clients ask for one InRelease at once."""
    upstream.put(INRELEASE, b"Origin: Debian\n" * 1000)
    upstream.delay = 0.5  # the download is under way while the others arrive
    cache, serving = _proxy(upstream, tmp_path / "cache", ttl=0, log=tmp_path / "proxy.log")
    with serving as url, ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: _get(url, INRELEASE), range(20)))
    assert answers == [(200, b"Origin: Debian\n" * 1000)] * 20
    assert upstream.count(INRELEASE) == 1
    results = [line.split()[5] for line in (tmp_path / "proxy.log").read_text().splitlines()]
    assert results.count("miss") == 1 and results.count("shared") + results.count("hit") == 19, results


def test_index_files_are_fetched_again_after_their_ttl_pool_files_never(upstream, tmp_path):
    upstream.put(INRELEASE, b"v1")
    upstream.put(DEB, b"deb" * 5000)
    _, serving = _proxy(upstream, tmp_path / "fresh", ttl=0)
    with serving as url:
        assert _get(url, INRELEASE) == (200, b"v1")
        upstream.put(INRELEASE, b"v2")
        assert _get(url, INRELEASE) == (200, b"v2")  # a later apt-get update sees the new index
        assert _get(url, DEB)[0] == _get(url, DEB)[0] == 200
    assert upstream.count(INRELEASE) == 2 and upstream.count(DEB) == 1

    _, serving = _proxy(upstream, tmp_path / "ttl", ttl=300)
    with serving as url:
        assert _get(url, INRELEASE) == _get(url, INRELEASE) == (200, b"v2")
    assert upstream.count(INRELEASE) == 3  # one more: the second came from the cache


def test_two_proxy_processes_sharing_the_cache_download_once(upstream, tmp_path):
    """Lab instances run one proxy each over one cache: the file lock is between them too."""
    upstream.put(DEB, b"x" * 200_000)
    upstream.delay = 0.5
    _, serving_a = _proxy(upstream, tmp_path / "cache")
    _, serving_b = _proxy(upstream, tmp_path / "cache")
    with serving_a as a, serving_b as b, ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: _get(a if i % 2 else b, DEB), range(10)))
    assert {status for status, _ in answers} == {200} and {len(body) for _, body in answers} == {200_000}
    assert upstream.count(DEB) == 1


def test_a_broken_upstream_download_is_retried_never_served_half_and_never_hangs(upstream, tmp_path):
    upstream.put(DEB, b"y" * 90_000)
    upstream.truncate.add("/debian" + DEB[len(ARCHIVE):])
    cache, serving = _proxy(upstream, tmp_path / "cache")
    with serving as url:
        t0 = time.monotonic()
        status, body = _get(url, DEB, timeout=60)
        assert status == 502 and b"upstream failed 3 times" in body
        assert time.monotonic() - t0 < 20
        assert upstream.count(DEB) == aptproxy.UPSTREAM_TRIES
        assert not cache.locate(DEB).exists()
        assert not list(cache.locate(DEB).parent.glob(".part-*"))
        upstream.truncate.clear()  # the mirror recovers: the next request (apt's retry) works
        assert _get(url, DEB) == (200, b"y" * 90_000)


def test_missing_files_are_404_and_not_cached(upstream, tmp_path):
    _, serving = _proxy(upstream, tmp_path / "cache", ttl=300)
    missing = ARCHIVE + "/dists/bookworm/main/i18n/Translation-xx.xz"
    with serving as url:
        assert _get(url, missing)[0] == 404
        upstream.put(missing, b"now there")
        assert _get(url, missing) == (200, b"now there")


@pytest.mark.parametrize(
    "url, status",
    [
        ("http://example.com/", 403),  # not the archive: the lab has no other way out
        ("http://deb.debian.org/debianx/dists/bookworm/InRelease", 403),
        ("http://deb.debian.org/debian/../etc/passwd", 403),
        ("http://deb.debian.org/debian/dists/bookworm/InRelease?x=1", 403),
        ("http://deb.debian.org/debian/dists/", 403),
    ],
)
def test_only_files_of_the_archive_are_served(upstream, tmp_path, url, status):
    _, serving = _proxy(upstream, tmp_path / "cache")
    with serving as proxy_url:
        assert _get(proxy_url, url)[0] == status
    assert not upstream.gets


def test_other_methods_and_relative_paths_are_refused(upstream, tmp_path):
    _, serving = _proxy(upstream, tmp_path / "cache")
    with serving as proxy_url:
        port = int(proxy_url.rsplit(":", 1)[1])
        for request, status in ((f"POST {INRELEASE} HTTP/1.1", 405), ("GET /debian/dists/x HTTP/1.1", 400),
                                ("CONNECT deb.debian.org:443 HTTP/1.1", 405)):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"{request}\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
                assert s.recv(100).split()[1] == str(status).encode(), request
    assert not upstream.gets


def test_a_silent_client_neither_blocks_others_nor_stays_forever(upstream, tmp_path, monkeypatch):
    monkeypatch.setattr(aptproxy._Handler, "timeout", 1.0)
    upstream.put(INRELEASE, b"ok")
    _, serving = _proxy(upstream, tmp_path / "cache")
    with serving as proxy_url:
        port = int(proxy_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            assert _get(proxy_url, INRELEASE) == (200, b"ok")
            silent.settimeout(5)
            assert silent.recv(10) == b""  # closed by the proxy after its idle timeout


def test_head_and_keep_alive_answer_complete_responses(upstream, tmp_path):
    upstream.put(INRELEASE, b"abc")
    upstream.put(DEB, b"def")
    _, serving = _proxy(upstream, tmp_path / "cache")
    with serving as proxy_url:
        assert _get(proxy_url, INRELEASE, method="HEAD") == (200, b"")
        port = int(proxy_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET {INRELEASE} HTTP/1.1\r\nHost: x\r\n\r\nGET {DEB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"def"):
                chunk = s.recv(4096)
                assert chunk, data
                data += chunk
    assert data.count(b"Content-Length: 3") == 2
