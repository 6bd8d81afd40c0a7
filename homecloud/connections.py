"""
The SSH connections of a run, tuned for many small commands: TCP_NODELAY on every socket.

    from homecloud.connections import tcp_nodelay
    tcp_nodelay(state)   # first line of every deploy file, before any fact is read

Why: pyinfra runs each fact and each command in a new SSH channel on one connection per host
(paramiko). Paramiko leaves Nagle's algorithm on, so the CHANNEL_OPEN of the next command
waits in the kernel until the node acknowledges the previous channel's last small packet, and
the node delays that acknowledgement (Linux: 40 ms, delayed ACK). Every round trip after the
first paid it: 45 ms for `true` on a lab node with Nagle on, 6 ms with TCP_NODELAY (paramiko
on the lab, 2026-12-04; the no-op re-run of deploys/all.py, timed by hand, went from 6.3-6.7 s
to 4.6-5.8 s with this alone). OpenSSH's own client sets TCP_NODELAY for the same reason.
It changes no byte on the wire, only when the controller sends them.

Sockets that are not plain TCP (a ProxyCommand pipe, a ProxyJump channel) are left alone; so
are other connectors (@local, @docker). A connection opened later in the run (pyinfra
reconnects after a reboot) is not tuned: that host's remaining round trips are slower, never
wrong.
"""

from __future__ import annotations

import socket
from typing import Any


def tcp_socket(host: Any) -> socket.socket | None:
    """The TCP socket under a host's open SSH connection, or None (not connected, not SSH, a proxy)."""
    client = getattr(getattr(host, "connector", None), "client", None)
    get_transport = getattr(client, "get_transport", None)
    transport = get_transport() if callable(get_transport) else None
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        return sock
    return None


def tcp_nodelay(state: Any) -> int:
    """Set TCP_NODELAY on the open SSH connection of every host of the run; returns how many were set.

    Cheap and safe to call again (each deploy file is exec'd once per host): a socket already
    set is set again; a closed one is skipped.
    """
    tuned = 0
    for host in state.inventory:
        sock = tcp_socket(host)
        if sock is None or sock.fileno() < 0:
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tuned += 1
    return tuned
