"""
Backup operations: restic run by a systemd timer through the homecloud-backup wrapper
(operations/backup_run.py, uploaded to the node), a per-node SSH key for SFTP targets, the
restricted SFTP account on a target node, the target's pinned host key, and restores.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pyinfra import host, state
from pyinfra.api import OperationError, QuoteString, StringCommand, operation

from facts.backup import PublicKeys, RestoreMarker
from facts.system import FileStates
from homecloud.schema import UNIX_USER_RE
from operations.system import secret_fact, write_file

WRAPPER = "/usr/local/lib/homecloud/homecloud-backup"
WRAPPER_TEXT = (Path(__file__).with_name("backup_run.py")).read_text()
CONFIG_DIR = "/etc/homecloud/backup"
CLIENT_KEY = f"{CONFIG_DIR}/id_ed25519"
KNOWN_HOSTS = f"{CONFIG_DIR}/known_hosts"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/homecloud-backup.conf"
AUTHORIZED_KEYS = "/etc/ssh/homecloud-backup/authorized_keys"


@operation()
def client_key(path: str = CLIENT_KEY, present: bool = True):
    """
    The node's own SSH key for its SFTP backup targets (ed25519, generated on the node, the
    private half never leaves it; 0600 root).

    + path: the private key (the public one is ``<path>.pub``)
    + present: False removes both

    **Example:**

    .. code:: python

        backup.client_key(name="Backup SSH key of this node")
    """
    current = host.get_fact(PublicKeys, paths=[path + ".pub"]).get(path + ".pub")
    if not present:
        if current:
            yield StringCommand("rm -f", QuoteString(path), QuoteString(path + ".pub"))
        else:
            host.noop(f"{path} does not exist")
        return
    if current:
        host.noop(f"{path} exists")
        return
    folder = shlex.quote(path.rsplit("/", 1)[0])
    yield f"install -d -m 700 {folder} && rm -f {shlex.quote(path)} && ssh-keygen -q -t ed25519 -N '' -C homecloud-backup@$(hostname) -f {shlex.quote(path)}"


@operation()
def sftp_account(
    user: str,
    root: str,
    clients: list[str],
    sudo: bool = False,
    present: bool = True,
):
    """
    On a target node: sshd's side of the restricted SFTP account the backup clients write to
    (the account and its folders are made before, with system.system_user and
    files.directory). sshd confines it
    (a Match block: ChrootDirectory `root`, ForceCommand internal-sftp, no forwarding, no TTY);
    its authorized keys, one per client node with ``restrict``, live outside the chroot in
    /etc/ssh/homecloud-backup/. The clients' public keys are read from them when the operation runs (cross-host).

    + user: the account (a system user, no shell)
    + root: the chroot (root-owned, as sshd requires)
    + clients: inventory names of the nodes backing up here
    + sudo: the clients are reached with sudo (to read their key)
    + present: False removes the sshd block and the keys (the repositories stay)

    **Example:**

    .. code:: python

        backup.sftp_account(name="SFTP account for backups", user="hcbackup", root="/srv/homecloud-backup", clients=["node1"])
    """
    if not UNIX_USER_RE.fullmatch(user):
        raise OperationError(f"user: {user!r} is not a valid user name")
    if not root.startswith("/"):
        raise OperationError(f"root: {root!r} is not an absolute path")
    files = host.get_fact(FileStates, paths=[SSHD_DROPIN, AUTHORIZED_KEYS])
    if not present:
        paths = [p for p in (SSHD_DROPIN, AUTHORIZED_KEYS) if files.get(p)]
        if paths:
            yield StringCommand("rm -f", *[QuoteString(p) for p in paths])
            yield "systemctl reload ssh"
        else:
            host.noop("no backup SFTP account config")
        return
    keys = []
    for client in sorted(clients):
        other = state.inventory.get_host(client, None) if hasattr(state.inventory, "get_host") else None
        if other is None:
            raise OperationError(f"clients: {client!r} is not a host of the inventory")
        key = secret_fact(other, PublicKeys, paths=[CLIENT_KEY + ".pub"], _sudo=sudo).get(CLIENT_KEY + ".pub")
        if key is None:
            if state.is_executing:
                raise OperationError(f"{client} has no backup key {CLIENT_KEY}.pub yet (its backup layer did not run?)")
            key = f"ssh-ed25519 (read from {client} when the deploy runs)"
        keys.append(f"restrict {key} homecloud-backup@{client}")
    dropin = (
        "# Written by homecloud (operations/backup.py): the backup account may only use SFTP in its chroot.\n"
        f"Match User {user}\n"
        f"    ChrootDirectory {root}\n"
        "    ForceCommand internal-sftp\n"
        f"    AuthorizedKeysFile {AUTHORIZED_KEYS}\n"
        "    PasswordAuthentication no\n"
        "    AllowTcpForwarding no\n"
        "    X11Forwarding no\n"
        "    PermitTTY no\n"
    )
    changed = yield from write_file(AUTHORIZED_KEYS, "".join(k + "\n" for k in keys), files.get(AUTHORIZED_KEYS), mode="644")
    if (yield from write_file(SSHD_DROPIN, dropin, files.get(SSHD_DROPIN), mode="644", check="/usr/sbin/sshd -t -f {}")):
        changed = True
        yield "systemctl reload ssh"
    if not changed:
        host.noop("the backup SFTP account's sshd block and keys are up to date")


@operation()
def known_hosts(hosts: dict[str, str], sudo: bool = False, path: str = KNOWN_HOSTS):
    """
    The pinned host keys of the SFTP targets (the client refuses any other): for each address,
    the key given, or the ed25519 host key of the inventory host named instead (read from it
    when the operation runs).

    + hosts: address -> "ssh-ed25519 AAAA..." or "host:<inventory name>"
    + sudo: inventory hosts are reached with sudo
    + path: the known_hosts file

    **Example:**

    .. code:: python

        backup.known_hosts(name="Pinned host keys of the backup targets", hosts={"192.168.1.13": "host:pi3"})
    """
    lines = []
    for address, key in sorted(hosts.items()):
        if key.startswith("host:"):
            other = state.inventory.get_host(key[5:], None) if hasattr(state.inventory, "get_host") else None
            if other is None:
                raise OperationError(f"hosts: {key[5:]!r} is not a host of the inventory")
            key = secret_fact(other, PublicKeys, paths=[HOST_KEY], _sudo=sudo).get(HOST_KEY)
            if key is None:
                raise OperationError(f"{other.name} has no {HOST_KEY}")
        lines.append(f"{address} {key}\n")
    current = host.get_fact(FileStates, paths=[path]).get(path)
    if not (yield from write_file(path, "".join(lines), current, mode="644")):
        host.noop(f"{path} is up to date")


@operation()
def restore(
    target: str,
    snapshot: str = "latest",
    paths: list[str] | None = None,
    restore_to: str | None = None,
    in_place: bool = False,
    node_replaced: bool = False,
):
    """
    Restore a snapshot once (homecloud-backup restore): into `restore_to`, a new folder of its
    own, or in place (never deleting, never overwriting files newer than the snapshot). A
    marker records what was restored: the same restore is not run twice, and a `restore_to`
    that holds other files is refused.

    + target: the backup target's name
    + snapshot: restic snapshot id, or latest
    + paths: only these paths of the snapshot (default: all)
    + restore_to: the folder to restore into (not with in_place)
    + in_place: put files back where they were
    + node_replaced: in place, and the Syncthing identity too, with Syncthing stopped meanwhile

    **Example:**

    .. code:: python

        backup.restore(name="Restore", target="node3", snapshot="latest", restore_to="/srv/dnas/restored")
    """
    in_place = in_place or node_replaced
    if in_place == bool(restore_to):
        raise OperationError("give either restore_to or in_place")
    wanted = {"target": target, "snapshot": snapshot, "paths": sorted(paths or []), "in_place": in_place, "node_replaced": node_replaced}
    if in_place:
        marker = f"/var/lib/homecloud/backup/restored-in-place-{snapshot}.json"
        folder = "/nonexistent"
    else:
        marker = restore_to.rstrip("/") + "/.homecloud-restore.json"
        folder = restore_to
    current = host.get_fact(RestoreMarker, marker=marker, folder=folder)
    if isinstance(current, dict) and current == wanted:
        host.noop(f"snapshot {snapshot} was restored already ({marker})")
        return
    if current is not None:
        raise OperationError(f"{restore_to} holds other files: restore into a new folder (restore_to), homecloud never overwrites them")
    args = [WRAPPER, "restore", "--target", target, "--snapshot", snapshot]
    for p in paths or []:
        args += ["--path", p]
    args += ["--node-replaced"] if node_replaced else (["--in-place"] if in_place else ["--to", restore_to])
    yield StringCommand(*[QuoteString(a) for a in args])
    yield StringCommand("mkdir -p", QuoteString(marker.rsplit("/", 1)[0]), "&& printf '%s\\n'", QuoteString(json.dumps(wanted, sort_keys=True)), ">", QuoteString(marker))
