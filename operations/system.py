"""
Generic system operations every layer uses: Debian packages, systemd services, system and
service accounts (the dnas owner too), files that hold a text; and the file-writing helpers
every operation composes with ``yield from``: ``write_file`` / ``replace_file`` (candidate,
check, backup, atomic rename), ``put_texts`` (several files from one fact read),
``backup_command``, ``move_aside``, ``restore_latest_backup``, ``upload_private``.

Every operation decides from facts read on the node (facts/system.py); a second run changes
nothing.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from io import StringIO

from pyinfra import host, state
from pyinfra.api import FileUploadCommand, OperationError, QuoteString, StringCommand, operation
from pyinfra.api.util import get_file_sha1
from pyinfra.operations.apt import noninteractive_apt
from pyinfra.operations.util import files as file_utils

from facts.system import DebStatus, FileStates, FolderAccess, ServiceAge, UnitStates, UnixAccount
from homecloud.schema import UNIX_USER_RE as ACCOUNT_RE

# What pyinfra's systemd facts count as running (SubState) and enabled (UnitFileState).
RUNNING_SUB_STATES = ("running", "waiting", "exited", "listening", "mounted")
ENABLED_FILE_STATES = ("enabled", "static")

# pyinfra's apt.update(cache_time=...) touches this file after an update; so does system.packages.
APT_UPDATE_STAMP = "/var/lib/apt/periodic/update-success-stamp"


def upload_private(content: str, dest: str, mode: str = "600"):
    """
    Commands that upload `content` (a secret) to `dest` with no readable copy of it at any
    moment: `dest` has `mode` before any byte is written (an upload into an existing file keeps
    its mode), and so has the temporary file pyinfra uploads through over SFTP when it uses sudo
    (created empty as the SSH user with umask 077, removed afterwards; SFTP would create it 0644).
    """
    temp = host.get_temp_filename(dest)
    q_dest = shlex.quote(dest)
    yield f"if [ -e {q_dest} ]; then chmod {mode} {q_dest}; else install -m {mode} /dev/null {q_dest}; fi"
    yield StringCommand("sh", "-c", QuoteString(f"umask 077 && : > {shlex.quote(temp)}"), _sudo=False)
    yield FileUploadCommand(StringIO(content), dest, remote_temp_filename=temp)
    yield StringCommand("rm", "-f", QuoteString(temp), _sudo=False)


# --- Writing files ----------------------------------------------------------------------------
#
# Every file homecloud writes goes through write_file / replace_file: a candidate next to the
# destination, an optional check of the candidate, a backup of what it replaces, an atomic
# rename into place. Backups are named <path>.<yymmddHHMM> (pyinfra's timestamp), mode 0600;
# a second backup in the same minute pushes the first one to <path>.<yymmddHHMM>.~1~ (GNU
# --backup=numbered), so no backup is ever overwritten.

CANDIDATE_SUFFIX = ".homecloud-new"
# The backup names move_aside / backup_command give, for a shell glob + grep -E of the suffix.
BACKUP_SUFFIX_ERE = r"\.[0-9]{10}$"


def backup_name(path: str) -> str:
    """Where a backup of `path` made now goes: ``<path>.<yymmddHHMM>``."""
    return f"{path}.{file_utils.get_timestamp()}"


def backup_command(path: str) -> StringCommand:
    """
    Copy `path` (its content, through a symlink) to ``<path>.<timestamp>`` with its owner and
    times, then make the copy 0600 (the file may hold a password). An earlier copy of the same
    name is renamed to ``.~N~``, never overwritten.
    """
    backup = backup_name(path)
    return StringCommand(
        "cp", "-pL", "--backup=numbered", QuoteString(path), QuoteString(backup), "&&", "chmod", "600", QuoteString(backup)
    )


def move_aside(path: str) -> StringCommand:
    """Rename `path` to ``<path>.<timestamp>`` (0600) instead of deleting it: it may hold edits made by hand."""
    backup = backup_name(path)
    return StringCommand(
        "mv", "-f", "--backup=numbered", QuoteString(path), QuoteString(backup), "&&", "chmod", "600", QuoteString(backup)
    )


def restore_latest_backup(path: str, mode: str = "644") -> StringCommand:
    """
    Shell that moves the newest ``<path>.<timestamp>`` backup back to `path` with `mode` (a
    ``<path>.homecloud.bak`` of older homecloud versions when there is no such backup), and
    exits 0 when it restored one, 1 when there is none.
    """
    q = shlex.quote(path)
    return StringCommand(
        f"b=$(ls -1d {q}.[0-9]* 2>/dev/null | grep -E {shlex.quote(BACKUP_SUFFIX_ERE)} | sort | tail -n 1); "
        f'if [ -z "$b" ] && [ -e {q}.homecloud.bak ]; then b={q}.homecloud.bak; fi; '
        f'[ -n "$b" ] && mv -f "$b" {q} && chmod {mode} {q}'
    )


def check_command(check: str, target: str, dest: str, check_name: str | None = None) -> StringCommand:
    """
    Shell that runs `check` (``{}`` stands for `target`, quoted) and, when it fails, stops the
    operation with a message that `dest` was not changed.
    """
    if "{}" not in check:
        raise OperationError(f"check `{check}` must contain {{}} where the candidate file goes")
    label = check_name or check.split()[0]
    kept = f" (the rejected file is {target})" if target != dest else ""
    return StringCommand(
        "(",
        check.replace("{}", shlex.quote(target)),
        ") || { echo",
        QuoteString(f"homecloud: {label} rejected the new {dest}; {dest} was not changed{kept}"),
        ">&2; exit 1; }",
    )


def replace_file(
    dest: str,
    text: str,
    exists: bool,
    mode: str = "644",
    user: str = "root",
    group: str = "root",
    check: str | None = None,
    check_name: str | None = None,
    backup: bool = False,
    secret: bool = False,
):
    """
    Commands that replace `dest` with `text`, whatever it holds now (the caller decided that
    it differs): the text is written to ``<dest>.homecloud-new`` (the folder is created when
    `dest` does not exist), `check` runs on it (a shell command, ``{}`` is the candidate, e.g.
    ``keepalived -t -f {}``, ``testparm -s {}``, ``sshd -t -f {}``; when it fails the operation
    fails, `dest` is untouched and the candidate is left to read), the file it replaces is
    copied to ``<dest>.<timestamp>`` (mode 0600) when `backup` and `exists`, and the candidate,
    with its mode and owner, is renamed over `dest` (atomic: a reader sees the old or the new
    file, never a part).

    + secret: the text is a secret: the candidate is 0600 before any byte is written, and so is
      pyinfra's temporary upload file (see ``upload_private``); `mode` must give nothing to group
      and others
    """
    if secret and int(mode, 8) & 0o077:
        raise OperationError(f"{dest} holds a secret: mode {mode} would let others read it")
    candidate = dest + CANDIDATE_SUFFIX
    if not exists:
        yield StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(dest) or "/"))
    if secret:
        yield from upload_private(text, candidate, "600")
    else:
        yield FileUploadCommand(StringIO(text), candidate, remote_temp_filename=host.get_temp_filename(candidate))
    if check:
        yield check_command(check, candidate, dest, check_name)
    if backup and exists:
        yield backup_command(dest)
    yield StringCommand(
        "chown", QuoteString(f"{user}:{group}"), QuoteString(candidate),
        "&&", "chmod", mode, QuoteString(candidate),
        "&&", "mv", "-f", QuoteString(candidate), QuoteString(dest),
    )


def _sha(text: str, current: dict) -> tuple[str, str]:
    if "sha1" in current:
        return current["sha1"], get_file_sha1(StringIO(text))
    return current["sha256"], hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_differs(text: str, current: dict | None) -> bool:
    """Whether `text` differs from the file `current` describes (a ``system.FileStates`` or
    ``k3s.K3sFile`` entry; None: the file does not exist)."""
    return current is None or len(set(_sha(text, current))) == 2


def write_file(
    dest: str,
    text: str,
    current: dict | None,
    mode: str = "644",
    user: str = "root",
    group: str = "root",
    check: str | None = None,
    check_name: str | None = None,
    backup: bool = False,
    secret: bool = False,
):
    """
    Commands that make `dest` hold `text` with `mode` and owner, decided from `current`: the
    file's ``system.FileStates`` entry (or a ``k3s.K3sFile`` one: sha256 and mode, the owner
    is then not compared), None when it does not exist. Different content: ``replace_file``
    (candidate, check, backup, rename); same content: only ``chown`` / ``chmod`` where they
    differ (no backup: nothing of the content is lost); nothing when all is as wanted. Returns
    (``changed = yield from write_file(...)``) whether it yielded a command.

    + backup: keep the replaced file as ``<dest>.<timestamp>`` (0600): for files a user or the
      distribution may have written; not needed for files homecloud owns and regenerates
    + secret: see ``replace_file``
    """
    if content_differs(text, current):
        yield from replace_file(dest, text, current is not None, mode, user, group, check, check_name, backup, secret)
        return True
    changed = False
    if "user" in current and (current["user"], current["group"]) != (user, group):
        yield StringCommand("chown", QuoteString(f"{user}:{group}"), QuoteString(dest))
        changed = True
    if int(current["mode"], 8) != int(mode, 8):
        yield StringCommand("chmod", mode, QuoteString(dest))
        changed = True
    return changed


def put_texts(wanted: list[dict], states: dict | None = None) -> dict[str, list]:
    """
    ``write_file`` for several files, decided from ONE ``system.FileStates`` read for all of
    them (pyinfra's ``files.put`` reads three facts per file: the file, its folder, its sha1):
    the commands by path ([] for a file that is as wanted).

    + wanted: ``[{"dest": path, "text": str, "mode": "644", "user": "root", "group": "root",
      "backup": False}]`` (all but dest and text optional); a missing folder is created
    + states: the ``system.FileStates`` of these paths when the operation read it already
    """
    if states is None:
        states = host.get_fact(FileStates, paths=[f["dest"] for f in wanted])
    return {
        f["dest"]: list(
            write_file(
                f["dest"],
                f["text"],
                states.get(f["dest"]),
                mode=f.get("mode", "644"),
                user=f.get("user", "root"),
                group=f.get("group", "root"),
                backup=f.get("backup", False),
            )
        )
        for f in wanted
    }


def apt_install(packages: list[str], cache_time: int) -> list:
    """
    Commands that install `packages`: ``apt-get update`` first unless the package lists are
    younger than `cache_time` seconds (decided on the node, from the stamp file pyinfra's
    ``apt.update`` uses too), then ``apt-get install``.
    """
    minutes = -(-cache_time // 60)
    update = f"apt-get update && touch {APT_UPDATE_STAMP}"
    if minutes > 0:
        update = f'if [ -z "$(find {APT_UPDATE_STAMP} -mmin -{minutes} 2>/dev/null)" ]; then {update}; fi'
    return [update, StringCommand(noninteractive_apt("install"), *[QuoteString(p) for p in packages])]


@operation()
def packages(packages: list[str], present: bool = True, cache_time: int = 3600):
    """
    Install Debian packages that are missing (or remove installed ones), from one short fact.

    + packages: package names
    + present: False removes the packages that are installed (``apt-get remove``, config kept)
    + cache_time: ``apt-get update`` runs before an install unless the package lists were
      updated less than this many seconds ago (0: always before an install)

    What pyinfra's ``apt.packages(update=True, cache_time=...)`` does, in one fact read instead
    of three (installed packages, the node's date, the update stamp): an installed package
    needs neither the package lists nor the date, so a re-run reads only the state of the
    packages asked for; whether the lists are fresh is decided on the node, in the command
    that installs.

    **Example:**

    .. code:: python

        system.packages(name="Install keepalived", packages=["keepalived", "curl"])
    """
    if not packages:
        raise OperationError("packages must name at least one package")
    for package in packages:
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9]+)?", package):
            raise OperationError(f"`{package}` is not a Debian package name")
    status = host.get_fact(DebStatus, packages=list(packages))
    installed = [p for p in packages if status.get(p.split(":")[0], "")[1:2] == "i"]

    if not present:
        if installed:
            yield StringCommand(noninteractive_apt("remove"), *[QuoteString(p) for p in installed])
        else:
            host.noop(f"{', '.join(packages)} not installed")
        return

    missing = [p for p in packages if p not in installed]
    if missing:
        yield from apt_install(missing, cache_time)
    else:
        host.noop(f"{', '.join(packages)} installed")


@operation()
def system_user(
    user: str,
    home: str = "/nonexistent",
    shell: str = "/usr/sbin/nologin",
    present: bool = True,
):
    """
    A system account (no home directory is created, a group of its name) that runs a service's
    helper programs; its home and shell are kept as asked.

    + user: the account name
    + home: home directory written in passwd (not created)
    + shell: login shell (default: no login)
    + present: False removes the account (not its files)

    Reads only this account (``getent``), not every user of the node.

    **Example:**

    .. code:: python

        system.system_user(name="User for keepalived's scripts", user="keepalived_script")
    """
    if not ACCOUNT_RE.fullmatch(user):
        raise OperationError(f"`{user}` is not a valid user name")
    existing = host.get_fact(UnixAccount, user=user, group=user)["user"]

    if not present:
        if existing:
            yield StringCommand("userdel", QuoteString(user))
        else:
            host.noop(f"user {user} is absent")
        return

    if existing is None:
        yield StringCommand(
            "useradd --system --no-create-home --user-group --home-dir",
            QuoteString(home),
            "--shell",
            QuoteString(shell),
            QuoteString(user),
        )
        return
    changes: list = []
    if existing["home"] != home:
        changes += ["--home", QuoteString(home)]
    if existing["shell"] != shell:
        changes += ["--shell", QuoteString(shell)]
    if changes:
        yield StringCommand("usermod", *changes, QuoteString(user))
    else:
        host.noop(f"user {user} exists")


def unit_states(units: list[str]) -> dict[str, dict]:
    """``system.UnitStates`` as booleans: unit -> {"running": bool, "enabled": bool}."""
    states = host.get_fact(UnitStates, units=list(units))
    return {
        unit: {
            "running": (states.get(unit) or {}).get("sub") in RUNNING_SUB_STATES,
            "enabled": (states.get(unit) or {}).get("file") in ENABLED_FILE_STATES,
        }
        for unit in units
    }


@operation()
def services(services: list[str], running: bool = True, enabled: bool = True):
    """
    Several systemd services running (or stopped) and enabled (or disabled) at boot, decided
    from one fact read (what ``systemd.service`` does per service with two), in the order given.

    + services: unit names (``.service`` is added to names without a suffix)
    + running: True starts the stopped ones, False stops the running ones
    + enabled: True enables the disabled ones, False disables the enabled ones

    Running and enabled mean what they mean to pyinfra's ``systemd.service`` (a ``static``
    unit counts as enabled, an ``exited`` oneshot as running). Restart a service whose
    configuration changed with ``restarted_if_older`` (decided from the node, so a failed run
    is caught up), reload one with ``systemd.service(..., _if=...)``.

    **Example:**

    .. code:: python

        system.services(name="NFS is running", services=["rpcbind", "nfs-ganesha"])
    """
    if not services:
        raise OperationError("services must name at least one unit")
    units = [unit if "." in unit else f"{unit}.service" for unit in services]
    states = unit_states(units)
    changed = False
    for unit in units:
        if states[unit]["running"] != running:
            yield StringCommand("systemctl", "start" if running else "stop", QuoteString(unit))
            changed = True
        if states[unit]["enabled"] != enabled:
            yield StringCommand("systemctl", "enable" if enabled else "disable", QuoteString(unit))
            changed = True
    if not changed:
        host.noop(
            f"{', '.join(units)} {'running' if running else 'stopped'} and "
            f"{'enabled' if enabled else 'disabled'}"
        )


@operation()
def restarted_if_older(service: str, paths: list[str]):
    """
    Restart a running service that became active before the last change of any of its
    configuration files: what ``systemd.service(restarted=True, _if=config.did_change)`` does,
    but decided from the node. A run that wrote the configuration and then failed before the
    restart is caught up by the next run, which ``_if`` cannot do (the file no longer changes).

    + service: the systemd unit (``.service`` added to a name without a suffix)
    + paths: the files the service reads when it starts (ones that do not exist are ignored)

    A stopped service is left alone: it reads its configuration when it starts. The comparison
    is to the microsecond; the restart makes the service younger than its files, so the next run
    is a no-op.

    **Example:**

    .. code:: python

        system.restarted_if_older(
            name="nfs-ganesha runs its current configuration",
            service="nfs-ganesha",
            paths=["/etc/ganesha/ganesha.conf"],
        )
    """
    if not paths:
        raise OperationError("paths must name at least one configuration file")
    unit = service if "." in service else f"{service}.service"
    age = host.get_fact(ServiceAge, unit=unit, paths=list(paths))
    if not age["active"]:
        host.noop(f"{unit} is not running: it reads its configuration when it starts")
        return
    if age["newest"] is None:
        host.noop(f"none of {', '.join(paths)} exists")
        return
    if age["since"] is not None and age["newest"] <= age["since"]:
        host.noop(f"{unit} started after {age['newest_path']} last changed")
        return
    yield StringCommand("systemctl", "restart", QuoteString(unit))


@operation()
def text_file(
    path: str,
    text: str,
    mode: str = "644",
    user: str = "root",
    group: str = "root",
    check: str | None = None,
    backup: bool = False,
    secret: bool = False,
    present: bool = True,
):
    """
    A file that holds exactly a text, with its mode and owner (one fact read; pyinfra's
    ``files.put`` reads three), written through ``write_file``: a candidate next to it, the
    check, a backup, an atomic rename.

    + path: the file (its folder is created when missing)
    + text: what it holds
    + mode: its mode (octal, as a string)
    + user: its owner
    + group: its group
    + check: a command that must accept the candidate before it replaces the file, ``{}``
      standing for the candidate (e.g. ``sshd -t -f {}``); when it fails, the file is untouched
      and the operation fails
    + backup: keep the file it replaces as ``<path>.<timestamp>`` (mode 0600): True for a file
      the distribution or a user wrote; False (default) for a file homecloud owns and regenerates
    + secret: the text is a secret: no copy of it is ever readable by others (mode must be 0600
      or stricter)
    + present: False removes it (moved to ``<path>.<timestamp>`` when backup is True)

    **Example:**

    .. code:: python

        system.text_file(
            name="nfs-ganesha stop waits",
            path="/etc/systemd/system/nfs-ganesha.service.d/homecloud-stop-wait.conf",
            text="[Service]\\nExecStopPost=/bin/true\\n",
        )
    """
    if not path.startswith("/"):
        raise OperationError(f"{path!r} is not an absolute path")
    current = host.get_fact(FileStates, paths=[path]).get(path)
    if not present:
        if current:
            yield move_aside(path) if backup else StringCommand("rm -f", QuoteString(path))
        else:
            host.noop(f"{path} does not exist")
        return
    changed = yield from write_file(
        path, text, current, mode=mode, user=user, group=group, check=check, backup=backup, secret=secret
    )
    if not changed:
        host.noop(f"{path} is up to date")


@operation()
def account(
    user: str,
    group: str | None = None,
    uid: int | None = None,
    gid: int | None = None,
    home: str = "/nonexistent",
    shell: str = "/usr/sbin/nologin",
    present: bool = True,
):
    """
    Create a Unix account without login shell or home when it is absent; leave an existing one
    as it is (it may be a real person's login), but refuse one whose uid/gid differs from the
    fixed ids asked for (files would change hands).

    + user: the account name
    + group: its primary group (default: a group named like the user), created when absent
    + uid: fixed user id (None: the next free one)
    + gid: fixed group id (None: the next free one)
    + home: home directory written in passwd (not created)
    + shell: login shell (default: no login)
    + present: False removes the account (not its files, not its group)

    **Example:**

    .. code:: python

        system.account(user="dnas", uid=2000, gid=2000, home="/srv/dnas")
    """
    if not ACCOUNT_RE.fullmatch(user):
        raise OperationError(f"`{user}` is not a valid user name")
    group = group or user
    if not ACCOUNT_RE.fullmatch(group):
        raise OperationError(f"`{group}` is not a valid group name")

    current = host.get_fact(UnixAccount, user=user, group=group)
    existing_user = current["user"]
    existing_group = current["group"]

    if not present:
        if existing_user:
            yield StringCommand("userdel", shlex.quote(user))
        else:
            host.noop(f"user {user} is absent")
        return

    if existing_user:
        if uid is not None and existing_user["uid"] != uid:
            raise OperationError(
                f"user {user} exists with uid {existing_user['uid']}, not {uid}: change it by hand "
                f"(usermod -u {uid} {user}, then chown its files) or set the uid to {existing_user['uid']}"
            )
        if gid is not None and existing_group and existing_group["gid"] != gid:
            raise OperationError(
                f"group {group} exists with gid {existing_group['gid']}, not {gid}: change it by hand "
                f"or set the gid to {existing_group['gid']}"
            )
        host.noop(f"user {user} exists (left as it is)")
        return

    if existing_group is None:
        args = ["groupadd"]
        if gid is not None:
            args += ["--gid", str(gid)]
        yield StringCommand(*args, shlex.quote(group))
    elif gid is not None and existing_group["gid"] != gid:
        raise OperationError(
            f"group {group} exists with gid {existing_group['gid']}, not {gid}: change it by hand "
            f"or set the gid to {existing_group['gid']}"
        )

    args = ["useradd", "--no-create-home", "--home-dir", shlex.quote(home), "--shell", shlex.quote(shell)]
    args += ["--gid", shlex.quote(group)]
    if uid is not None:
        args += ["--uid", str(uid)]
    yield StringCommand(*args, shlex.quote(user))


# How many secret facts are being read right now (hosts run in parallel greenlets).
_SECRET_READS = {"count": 0, "print_fact_output": False}


def secret_fact(target, fact, **kwargs):
    """
    `target.get_fact(fact, **kwargs)` for a fact whose output is a secret (the join token, the
    admin kubeconfig): with -vvv pyinfra prints the output of every fact command, so it is
    switched off while such a fact is read (and switched back when the last one is done).
    """
    if _SECRET_READS["count"] == 0:
        _SECRET_READS["print_fact_output"] = getattr(state, "print_fact_output", False)
        state.print_fact_output = False
    _SECRET_READS["count"] += 1
    try:
        return target.get_fact(fact, **kwargs)
    finally:
        _SECRET_READS["count"] -= 1
        if _SECRET_READS["count"] == 0:
            state.print_fact_output = _SECRET_READS["print_fact_output"]


PRIVATE_ACL = ("user::rwx", "group::rwx", "other::---")


@operation()
def private_folders(paths: list[str], user: str, group: str | None = None, mode: str = "770", present: bool = True):
    """
    Folders for one owner and its group only: created when missing, owned by ``user:group``,
    ``mode`` (0770), and a default ACL ``user::rwx,group::rwx,other::---`` so that whatever is
    created inside later - by Samba, Syncthing, or an NFS client asking for 0644 - gets no
    permission for others (the kernel applies a default ACL instead of the creator's umask).
    Only the folders themselves change: files and subfolders already there are left as they are.
    One fact read for all folders. Needs ``setfacl`` (Debian package ``acl``).

    + paths: absolute folder paths
    + user: their owner
    + group: their group (default: ``user``)
    + mode: their mode (octal string)
    + present: False removes the default ACL (owner and mode stay)

    **Example:**

    .. code:: python

        system.private_folders(name="NAS folders", paths=["/srv/dnas", "/srv/dnas/data"], user="dnas")
    """
    group = group or user
    if not ACCOUNT_RE.fullmatch(user) or not ACCOUNT_RE.fullmatch(group):
        raise OperationError(f"`{user}:{group}` is not a valid owner")
    if not re.fullmatch(r"[0-7]{3,4}", mode):
        raise OperationError(f"mode `{mode}` is not an octal mode")
    folders = host.get_fact(FolderAccess, paths=list(paths))
    commands: list = []
    for path in paths:
        if not str(path).startswith("/"):
            raise OperationError(f"{path!r} is not an absolute path")
        current = folders.get(path)
        if not present:
            if current and current["default_acl"]:
                commands.append(StringCommand("setfacl", "-k", QuoteString(path)))
            continue
        if current is None:
            commands.append(StringCommand("mkdir", "-p", QuoteString(path)))
            current = {"mode": "", "user": "", "group": "", "default_acl": []}
        if (current["user"], current["group"]) != (user, group):
            commands.append(StringCommand("chown", QuoteString(f"{user}:{group}"), QuoteString(path)))
        if current["mode"].lstrip("0") != mode.lstrip("0"):
            commands.append(StringCommand("chmod", mode, QuoteString(path)))
        if sorted(current["default_acl"]) != sorted(PRIVATE_ACL):
            commands.append(StringCommand("setfacl", "-d", "--set", ",".join(PRIVATE_ACL), QuoteString(path)))
    if commands:
        yield from commands
    else:
        host.noop(f"{', '.join(paths)}: " + (f"{user}:{group} {mode}, private by default" if present else "no default ACL"))
