"""
keepalived: one VRRP instance that keeps the cluster's virtual IP on one healthy server.

The configuration is rendered from arguments, uploaded next to the live file as a candidate
(mode 0600 before any byte of it is written, it holds the VRRP password), checked with
``keepalived -t -f <candidate>`` and only then moved over the live file; keepalived is
reloaded only when the file changed. A configuration keepalived rejects never replaces the
working one.
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host
from pyinfra.api import HiddenValue, OperationError, operation

from facts.keepalived import STATE_FILE
from facts.system import FileStates
from homecloud.schema import INTERFACE_RE as IFACE_RE, KEEPALIVED_PASS_RE as AUTH_PASS_RE, UNIX_USER_RE
from operations.system import content_differs, move_aside, put_texts, write_file

INSTANCE = "homecloud_vip"
CHECK = "homecloud_check"
NOTIFY_HELPER = "/etc/keepalived/homecloud-notify"
CONFIG = "/etc/keepalived/keepalived.conf"
# The local k3s API answers TLS on 6443; anonymous requests get 401. Without --fail curl exits
# 0 for any HTTP answer (401 included) and non-zero when nothing answers (7) or TLS fails (35).
DEFAULT_CHECK = "/usr/bin/curl -sk -o /dev/null --max-time 2 https://127.0.0.1:6443/"
# keepalived -t on the candidate ({}). keepalived 2.2.7 (Debian 12, Raspberry Pi OS bookworm)
# kills its own config test with SIGTERM (exit 143) as soon as it checks a script that runs as
# a non-root user (upstream fix aae8e91, in 2.2.8). Only then the test is repeated on a 0600
# copy whose scripts run as root: everything else of the candidate (syntax, values, scripts
# present and safe) is still checked.
CONFIG_CHECK = (
    "keepalived -t -f {} || { [ $? = 143 ] && (umask 077; sed "
    + shlex.quote(r"s/^\([[:space:]]*script_user\)[[:space:]].*/\1 root/")
    + " {} > {}.test) && keepalived -t -f {}.test; rc=$?; rm -f {}.test; exit $rc; }"
)

IPV4_RE = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})")

def notify_helper_text(interface: str, vip: str) -> str:
    """The state recorder keepalived runs (as root) on every transition, with the new state."""
    state_dir = STATE_FILE.rsplit("/", 1)[0]
    return f"""#!/bin/sh
# homecloud: keepalived runs this (as root) on every VRRP state change of {INSTANCE}
# with the new state as $1; facts/keepalived.py (VrrpStatus) reads the file it writes.
# keepalived starts one process per transition and does not wait for it: two transitions a
# few milliseconds apart (MASTER, then BACKUP on hearing a higher priority) can finish in
# either order. So the runs take turns (flock), and a run the interface already contradicts
# is stale and records nothing: keepalived adds the VIP before it notifies MASTER and removes
# it before it notifies any other state.
set -eu
mkdir -p {state_dir}
exec 9>{state_dir}/keepalived.lock
flock 9
if ip -o -4 addr show dev {interface} | grep -qF ' {vip}/'; then holds=yes; else holds=no; fi
case "$1:$holds" in
    MASTER:no|BACKUP:yes|FAULT:yes|STOP:yes) exit 0 ;;
esac
printf '%s %s\\n' "$1" "$(date +%s)" > {STATE_FILE}.new
mv -f {STATE_FILE}.new {STATE_FILE}
"""


def _check_ipv4(value: str, what: str) -> None:
    match = IPV4_RE.fullmatch(str(value or ""))
    if not match or any(int(part) > 255 for part in match.groups()):
        raise OperationError(f"{what} `{value}` is not an IPv4 address")


def _quoted(command: str) -> str:
    if '"' in command or "\n" in command:
        raise OperationError(f"script `{command}` may not contain double quotes or newlines")
    return f'"{command}"'


def render_config(
    vip: str,
    prefix: int,
    interface: str,
    router_id: int,
    priority: int,
    auth_pass: str,
    node_name: str,
    unicast_src_ip: str | None = None,
    unicast_peers: list[str] | None = None,
    nopreempt: bool = False,
    advert_int: int = 1,
    check_script: str | None = None,
    notify_script: str | None = None,
    script_user: str = "keepalived_script",
) -> str:
    """The keepalived.conf text for the homecloud VIP instance (validates its arguments)."""
    _check_ipv4(vip, "vip")
    if not 1 <= int(prefix) <= 32:
        raise OperationError(f"prefix {prefix} must be 1-32")
    if not IFACE_RE.fullmatch(interface or ""):
        raise OperationError(f"interface `{interface}` is not an interface name")
    if not 1 <= int(router_id) <= 255:
        raise OperationError(f"router_id {router_id} must be 1-255")
    if not 1 <= int(priority) <= 254:
        raise OperationError(f"priority {priority} must be 1-254")
    if not 1 <= int(advert_int) <= 255:
        raise OperationError(f"advert_int {advert_int} must be 1-255")
    if not isinstance(auth_pass, str) or not AUTH_PASS_RE.fullmatch(auth_pass):
        raise OperationError(
            "auth_pass must be 1-8 characters without blanks, quotes, # or ! (keepalived cuts the rest)"
        )
    if not UNIX_USER_RE.fullmatch(script_user or ""):
        raise OperationError(f"script_user `{script_user}` is not a user name")
    peers = list(unicast_peers or [])
    if peers:
        if not unicast_src_ip:
            raise OperationError("unicast_src_ip is required with unicast_peers")
        _check_ipv4(unicast_src_ip, "unicast_src_ip")
        for peer in peers:
            _check_ipv4(peer, "unicast peer")

    check = check_script or DEFAULT_CHECK
    lines = [
        "# Managed by homecloud (deploys/keepalived.py): changes here are replaced on the next run.",
        "global_defs {",
        f"    router_id {node_name}",
        "    enable_script_security",
        f"    script_user {script_user}",
        "}",
        "",
        f"vrrp_script {CHECK} {{",
        f"    script {_quoted(check)}",
        "    interval 1",
        "    timeout 2",
        "    fall 2",
        "    rise 2",
        "}",
        "",
        f"vrrp_instance {INSTANCE} {{",
        # nopreempt needs state BACKUP; BACKUP everywhere lets priority alone pick the holder.
        "    state BACKUP",
        f"    interface {interface}",
        f"    virtual_router_id {int(router_id)}",
        f"    priority {int(priority)}",
        f"    advert_int {int(advert_int)}",
    ]
    if nopreempt:
        lines.append("    nopreempt")
    if peers:
        lines.append(f"    unicast_src_ip {unicast_src_ip}")
        # Adverts from an address that is not one of the peers are dropped (issue 14).
        lines.append("    check_unicast_src")
        lines.append("    unicast_peer {")
        lines += [f"        {peer}" for peer in peers]
        lines.append("    }")
    lines += [
        "    authentication {",
        "        auth_type PASS",
        f"        auth_pass {auth_pass}",
        "    }",
        "    virtual_ipaddress {",
        f"        {vip}/{int(prefix)} dev {interface}",
        "    }",
        "    track_script {",
        f"        {CHECK}",
        "    }",
    ]
    for state in ("MASTER", "BACKUP", "FAULT", "STOP"):
        lines.append(f'    notify_{state.lower()} "{NOTIFY_HELPER} {state}" root')
    if notify_script:
        # keepalived's standard notify arguments (INSTANCE name state priority), as script_user.
        lines.append(f"    notify {_quoted(notify_script)}")
    lines += ["}", ""]
    return "\n".join(lines)


@operation()
def vip(
    vip: str,
    prefix: int,
    interface: str,
    router_id: int,
    priority: int,
    auth_pass: str | HiddenValue,
    node_name: str,
    unicast_src_ip: str | None = None,
    unicast_peers: list[str] | None = None,
    nopreempt: bool = False,
    advert_int: int = 1,
    check_script: str | None = None,
    notify_script: str | None = None,
    script_user: str = "keepalived_script",
    present: bool = True,
    path: str = CONFIG,
    reload: bool = True,
):
    """
    Configure keepalived to hold the virtual IP on one healthy node of a group.

    + vip: the virtual IPv4 address
    + prefix: its prefix length on the LAN (the VIP is added as vip/prefix)
    + interface: the LAN interface
    + router_id: VRRP virtual_router_id (1-255), unique on the LAN
    + priority: this node's VRRP priority (1-254); the highest healthy node holds the VIP
    + auth_pass: VRRP password, 1-8 characters (kept in the 0600 config file only; wrap it in
      ``HiddenValue`` so pyinfra never prints it with the operation's arguments)
    + node_name: this node's name (global_defs router_id)
    + unicast_src_ip: this node's address, for unicast VRRP
    + unicast_peers: the other nodes' addresses; empty or None: multicast
    + nopreempt: a recovered node does not take the VIP back
    + advert_int: seconds between adverts
    + check_script: health check command (exit 0 = healthy), run as script_user without a
      shell; None: the local k3s API answers TLS on 127.0.0.1:6443
    + notify_script: optional command run on state changes with keepalived's notify arguments
    + script_user: the unprivileged user keepalived runs scripts as (must exist)
    + present: False stops and disables keepalived and moves the config to ``<path>.<timestamp>``
    + path: the keepalived config file
    + reload: reload (or start) keepalived when the config changed

    The candidate config is checked with ``keepalived -t`` before it replaces the live one;
    when keepalived rejects it the operation fails, the live file stays, and the rejected
    candidate is left at ``<path>.homecloud-new`` (mode 0600) to read.

    **Example:**

    .. code:: python

        keepalived.vip(
            name="Virtual IP",
            vip="192.168.1.240", prefix=24, interface="eth0", router_id=51,
            priority=150, auth_pass=HiddenValue(secret("keepalived_auth_pass", length=8)),
            node_name="pi1", unicast_src_ip="192.168.1.11",
            unicast_peers=["192.168.1.12", "192.168.1.13"],
        )
    """
    # One read for both files: the live config and the state recorder.
    states = host.get_fact(FileStates, paths=[path, NOTIFY_HELPER])
    remote = states.get(path)

    if not present:
        if remote:
            yield "systemctl disable --now keepalived.service"
            yield move_aside(path)
        else:
            host.noop(f"{path} does not exist")
        return

    config = render_config(
        vip=vip,
        prefix=prefix,
        interface=interface,
        router_id=router_id,
        priority=priority,
        auth_pass=auth_pass.unmask() if isinstance(auth_pass, HiddenValue) else auth_pass,
        node_name=node_name,
        unicast_src_ip=unicast_src_ip,
        unicast_peers=unicast_peers,
        nopreempt=nopreempt,
        advert_int=advert_int,
        check_script=check_script,
        notify_script=notify_script,
        script_user=script_user,
    )

    # The state recorder must exist before keepalived -t looks at the scripts. homecloud owns
    # it and regenerates it: no backup.
    helper_text = notify_helper_text(interface, vip)
    helper = put_texts([{"dest": NOTIFY_HELPER, "text": helper_text, "mode": "755"}], states=states)[NOTIFY_HELPER]
    yield from helper
    # The config holds the VRRP password (secret: no readable copy at any moment; root's 0600:
    # keepalived refuses a config others can write). The file it replaces (the distribution's
    # sample, or one edited by hand) is kept as a 0600 backup.
    content_changed = content_differs(config, remote)
    changed = yield from write_file(
        path, config, remote, mode="600", check=CONFIG_CHECK, check_name="keepalived", backup=True, secret=True
    )
    if reload and content_changed:
        yield "systemctl reload-or-restart keepalived.service"
    if not helper and not changed:
        host.noop(f"{path} is up to date")
