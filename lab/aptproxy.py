"""
A small caching HTTP proxy for the Debian archive: the lab's only way out.

Nodes have no route and no DNS; their apt sends full URLs (``Acquire::http::Proxy``) to this
proxy on the controller's address on the lab bridge. It answers only GET and HEAD for URLs under
the archive prefixes it is given (the mirrors the host itself uses), and nothing else.

    python -m lab.aptproxy --bind 10.231.7.1 --port 3142 --cache DIR \\
        --allow http://deb.debian.org/debian --allow http://deb.debian.org/debian-security

Why not apt-cacher-ng (which the lab used before): with several nodes refreshing the same
``InRelease`` at once it sometimes logged "Failure to move file ... File exists" and left a
client connection half-closed; apt then hung for many minutes (seen twice in CI-like runs, a
known class of bugs of that proxy under concurrent requests for one file). This one is built
around that case:

- **One download per file, whoever asks.** A download happens under an exclusive ``flock`` on
  a lock file of its own (also between proxy processes of several lab instances, which share the
  cache). A request that waited for the lock takes the file that the holder just fetched: a
  copy is good for a request when it was fetched after the request started (minus
  ``--index-ttl``). Files of the pool and ``by-hash`` files never change and are kept.
- **Nothing half-written is served.** A download goes to a temporary file, is checked against
  ``Content-Length`` and renamed into place; a failed or short download is retried (3 times)
  and then answered with ``502`` and a complete, closed response: apt's own retries take over.
- **Nothing waits forever.** Upstream connections and reads time out (30 s), waiting for
  another request's download gives up after ``LOCK_WAIT`` seconds (``504``), and an idle client
  connection is closed after ``CLIENT_IDLE`` seconds.
- Every request is logged on one line (time, client, method, status, bytes, cache result,
  seconds, URL) so a slow or failed apt run can be read afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import http.client
import http.server
import os
import posixpath
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

UPSTREAM_TIMEOUT = 30.0
UPSTREAM_TRIES = 3
LOCK_WAIT = 300.0
CLIENT_IDLE = 120.0
# Files whose name pins their content: kept for good once fetched.
IMMUTABLE_PARTS = ("/pool/", "/by-hash/")
CHUNK = 1 << 16


class ProxyRefusal(Exception):
    """A request the proxy answers with an error status (and this text)."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


def _normalise_prefix(prefix: str) -> str:
    parts = urlsplit(prefix)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) archive URL: {prefix!r}")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/"


class ArchiveCache:
    """
    The cache behind the proxy: ``fetch(url, started)`` returns the path of a complete local
    copy of `url`, downloading it when no copy is good for a request that started at
    `started` (see the module docstring), or raises ProxyRefusal.
    """

    def __init__(self, root: Path, allowed: list[str], index_ttl: float = 300.0,
                 upstream_timeout: float = UPSTREAM_TIMEOUT, lock_wait: float = LOCK_WAIT,
                 prefix_map: dict[str, str] | None = None):
        self.root = Path(root)
        self.allowed = [_normalise_prefix(p) for p in allowed]
        self.index_ttl = index_ttl
        self.upstream_timeout = upstream_timeout
        self.lock_wait = lock_wait
        # Tests point an archive prefix at a local server; in the lab it is the identity.
        self.prefix_map = {_normalise_prefix(k): _normalise_prefix(v) for k, v in (prefix_map or {}).items()}
        self.downloads = 0  # upstream downloads that completed (for tests and the log)
        self._count_lock = threading.Lock()

    # --- where a URL goes -------------------------------------------------------------------

    def locate(self, url: str) -> Path:
        """The cache path of an allowed archive URL, or ProxyRefusal(403) naming why not."""
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            raise ProxyRefusal(403, "query strings are not part of the archive")
        normal = f"{parts.scheme}://{parts.netloc}{parts.path}"
        prefix = next((p for p in self.allowed if normal.startswith(p)), None)
        if prefix is None:
            raise ProxyRefusal(403, "only the Debian archive is reachable from the lab: " + " ".join(self.allowed))
        rest = normal[len(prefix):]
        if not rest or rest.endswith("/") or posixpath.normpath("/" + rest) != "/" + rest:
            raise ProxyRefusal(403, "not a file of the archive")
        host = parts.netloc.replace(":", "_")
        return self.root / host / parts.path.lstrip("/")

    def immutable(self, url: str) -> bool:
        return any(part in urlsplit(url).path for part in IMMUTABLE_PARTS)

    def _good(self, path: Path, url: str, started: float) -> bool:
        try:
            fetched = path.stat().st_mtime
        except FileNotFoundError:
            return False
        return self.immutable(url) or fetched >= started - self.index_ttl

    # --- the one download -------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(str(path).encode()).hexdigest()[:32]
        fd = os.open(locks / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.lock_wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ProxyRefusal(504, "another request's download of this file did not finish in time") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def fetch(self, url: str, started: float) -> tuple[Path, str]:
        """(path of a complete copy, "hit" | "miss" | "shared"): see the class docstring."""
        path = self.locate(url)
        if self._good(path, url, started):
            return path, "hit"
        with self._exclusive(path):
            # Whoever held the lock before us may have fetched it for us.
            if self._good(path, url, started):
                return path, "shared"
            self._download(url, path)
            return path, "miss"

    def upstream_url(self, url: str) -> str:
        for prefix, target in self.prefix_map.items():
            if url.startswith(prefix):
                return target + url[len(prefix):]
        return url

    def _download(self, url: str, path: Path) -> None:
        problem = ""
        for attempt in range(UPSTREAM_TRIES):
            if attempt:
                time.sleep(attempt)
            try:
                self._download_once(self.upstream_url(url), path)
                with self._count_lock:
                    self.downloads += 1
                return
            except ProxyRefusal:
                raise
            except (OSError, http.client.HTTPException) as e:
                problem = f"{type(e).__name__}: {e}"
        raise ProxyRefusal(502, f"upstream failed {UPSTREAM_TRIES} times: {problem}")

    def _download_once(self, url: str, path: Path, hops: int = 3) -> None:
        parts = urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(parts.hostname, parts.port, timeout=self.upstream_timeout)
        try:
            conn.request("GET", parts.path or "/", headers={"User-Agent": "homecloud-lab-aptproxy"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and hops:
                target = resp.getheader("Location", "")
                if not target:
                    raise ProxyRefusal(502, f"upstream redirect without a Location ({resp.status})")
                resp.read()
                if target.startswith("/"):
                    target = f"{parts.scheme}://{parts.netloc}{target}"
                return self._download_once(target, path, hops - 1)
            if resp.status in (404, 410):
                raise ProxyRefusal(404, f"not in the archive (upstream {resp.status})")
            if resp.status != 200:
                raise ProxyRefusal(502, f"upstream answered {resp.status} {resp.reason}")
            expected = resp.getheader("Content-Length")
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            try:
                size = 0
                with os.fdopen(fd, "wb") as out:
                    while chunk := resp.read(CHUNK):
                        out.write(chunk)
                        size += len(chunk)
                if expected is not None and size != int(expected):
                    raise http.client.IncompleteRead(b"", int(expected) - size)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)  # the fetch time is the new file's mtime
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        finally:
            conn.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_IDLE
    server_version = "homecloud-lab-aptproxy"
    cache: ArchiveCache
    journal: Callable[[str], None]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _refuse_method(self) -> None:
        self._error(405, "only GET and HEAD", time.monotonic(), "-")

    do_POST = do_PUT = do_DELETE = do_CONNECT = do_OPTIONS = do_PATCH = _refuse_method

    def _serve(self, body: bool) -> None:
        t0 = time.monotonic()
        started = time.time()
        url = self.path
        try:
            if not url.startswith(("http://", "https://")):
                raise ProxyRefusal(400, "send full URLs: this is a proxy (Acquire::http::Proxy)")
            path, result = self.cache.fetch(url, started)
        except ProxyRefusal as e:
            self._error(e.status, e.text, t0, "-")
            return
        except OSError as e:  # the cache itself (disk full, permissions): still a complete answer
            self._error(502, f"proxy cache error: {e}", t0, "-")
            return
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            size = stat.st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Last-Modified", self.date_time_string(stat.st_mtime))
            self.end_headers()
            if body:
                try:
                    while chunk := f.read(CHUNK):
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError, socket.timeout):
                    self.close_connection = True
                    self._journal(200, size, result + "/client-gone", t0)
                    return
        self._journal(200, size if body else 0, result, t0)

    def _error(self, status: int, text: str, t0: float, result: str) -> None:
        data = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._journal(status, len(data), f"{result} {text}", t0)

    def _journal(self, status: int, size: int, result: str, t0: float) -> None:
        self.journal(
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.client_address[0]} {self.command} {status} {size} "
            f"{result} {time.monotonic() - t0:.2f}s {self.path}"
        )

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        pass  # one line per request comes from _journal


class ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    log_out = None

    def server_close(self) -> None:
        super().server_close()
        if self.log_out:
            self.log_out.close()


def make_server(bind: str, port: int, cache: ArchiveCache, log_file: Path | None = None) -> ProxyServer:
    """A proxy server (not yet serving) on bind:port (port 0: any free port)."""
    lock = threading.Lock()
    out = open(log_file, "a", encoding="utf-8", buffering=1) if log_file else None

    def journal(line: str) -> None:
        if out:
            with lock:
                out.write(line + "\n")

    handler = type("Handler", (_Handler,), {"cache": cache, "journal": staticmethod(journal)})
    try:
        server = ProxyServer((bind, port), handler)
    except OSError:
        if out:
            out.close()
        raise
    server.log_out = out
    return server


@contextlib.contextmanager
def serving(cache: ArchiveCache, bind: str = "127.0.0.1", log_file: Path | None = None) -> Iterator[str]:
    """A proxy in a thread of this process for the duration of the block; yields its URL."""
    server = make_server(bind, 0, cache, log_file)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="aptproxy", daemon=True)
    thread.start()
    try:
        yield f"http://{bind}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.aptproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--instance", help="the lab instance this proxy serves (how `lab down` finds it)")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--allow", action="append", required=True, help="an archive URL prefix (repeat)")
    parser.add_argument("--index-ttl", type=float, default=300.0,
                        help="seconds an index file (InRelease, ...) fetched for an earlier request is still served")
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    cache = ArchiveCache(args.cache, args.allow, index_ttl=args.index_ttl)
    try:
        server = make_server(args.bind, args.port, cache, args.log)
    except OSError as e:
        print(f"aptproxy: cannot listen on {args.bind}:{args.port}: {os.strerror(e.errno or errno.EIO)}", file=sys.stderr)
        return 1
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
