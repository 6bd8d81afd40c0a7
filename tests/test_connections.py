"""
homecloud/connections.py: TCP_NODELAY on the SSH sockets of a run (real sockets here), and the
rule that every deploy file sets it before it reads any fact.
"""

import ast
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from homecloud.connections import tcp_nodelay, tcp_socket

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tcp_pair():
    """A connected TCP socket (client side) to a listener on 127.0.0.1; closed afterwards."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    yield client
    for s in (client, accepted, server):
        s.close()


def _ssh_host(sock):
    """A host shaped like pyinfra's SSH one: host.connector.client.get_transport().sock."""
    transport = SimpleNamespace(sock=sock)
    client = SimpleNamespace(get_transport=lambda: transport)
    return SimpleNamespace(name="node1", connector=SimpleNamespace(client=client))


def _nodelay(sock) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_sets_nodelay_on_every_ssh_socket_and_skips_the_rest(tcp_pair):
    assert _nodelay(tcp_pair) == 0  # the kernel's default: Nagle on
    pipe_a, pipe_b = socket.socketpair()  # a ProxyCommand-like pipe: not TCP
    hosts = [
        _ssh_host(tcp_pair),
        _ssh_host(pipe_a),
        SimpleNamespace(name="local", connector=SimpleNamespace()),  # @local: no client
        SimpleNamespace(name="down", connector=SimpleNamespace(client=None)),  # not connected
    ]
    state = SimpleNamespace(inventory=hosts)
    try:
        assert tcp_nodelay(state) == 1
        assert _nodelay(tcp_pair) == 1
        assert tcp_socket(hosts[1]) is None
        assert tcp_nodelay(state) == 1  # again: harmless
    finally:
        pipe_a.close()
        pipe_b.close()


def test_closed_socket_is_skipped(tcp_pair):
    host = _ssh_host(tcp_pair)
    tcp_pair.close()
    assert tcp_nodelay(SimpleNamespace(inventory=[host])) == 0


def _module_calls(path: Path) -> list[str]:
    """Names of the functions called by top-level statements, in order."""
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name):
            names.append(node.value.func.id)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "deploys").glob("*.py")), ids=lambda p: p.name)
def test_every_deploy_sets_nodelay_before_anything_else(path):
    calls = _module_calls(path)
    assert calls and calls[0] == "tcp_nodelay", f"{path.name}: first call should be tcp_nodelay(state), got {calls[:2]}"
    # Then pyinfra's operation order without source reads (homecloud/oporder.py), before any operation.
    assert calls[1:2] == ["fast_op_order"], f"{path.name}: second call should be fast_op_order(), got {calls[:2]}"


def test_the_rule_catches_a_deploy_without_it(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from homecloud.model import check_state\ncheck_state(state)\ntcp_nodelay(state)\n")
    assert _module_calls(bad)[0] == "check_state"
