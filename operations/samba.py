"""
Samba on a dnas node: Samba users and the shares of the dnas data folder.

The shares live in one managed include file (default `/etc/samba/homecloud.conf`); the
distribution's smb.conf is kept and only gets an `include =` line at the end of its [global]
section (after a backup copy). Every candidate configuration is checked with `testparm -s` before it replaces the
live one.

Passwords: a Samba password goes to `smbpasswd` on its standard input, never in a command line.
Whether it must be set is decided without storing it anywhere: the controller computes the NT
hash of the password it holds (MD4 of the UTF-16LE password, what Samba stores) and compares a
fingerprint of it, sha256("<user>:<NT hash>"), with the one the node computes from `pdbedit -L
-w` (fact `samba.SambaUsers`). Equal: nothing to do; different or absent: set it.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import struct

from pyinfra import host
from pyinfra.api import HiddenValue, OperationError, StringCommand, operation
from pyinfra.facts.files import FileContents

from facts.samba import SambaUsers
from homecloud.schema import SHARE_NAME_RE, UNIX_USER_RE as USER_RE
from operations.system import account, backup_command, check_command, move_aside, replace_file

HEADER = "# Managed by homecloud (operations/samba.py): edits here are overwritten."


# --- NT hash (MD4), in pure Python: OpenSSL 3 no longer offers MD4 to hashlib ---------------


def _rotl(value: int, shift: int) -> int:
    value &= 0xFFFFFFFF
    return ((value << shift) | (value >> (32 - shift))) & 0xFFFFFFFF


def md4(data: bytes) -> bytes:
    """MD4 digest (RFC 1320)."""
    message = bytearray(data)
    bit_length = (8 * len(data)) & 0xFFFFFFFFFFFFFFFF
    message.append(0x80)
    while len(message) % 64 != 56:
        message.append(0)
    message += struct.pack("<Q", bit_length)

    rounds = (
        (lambda x, y, z: (x & y) | (~x & z), 0, range(16), (3, 7, 11, 19)),
        (
            lambda x, y, z: (x & y) | (x & z) | (y & z),
            0x5A827999,
            (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
            (3, 5, 9, 13),
        ),
        (
            lambda x, y, z: x ^ y ^ z,
            0x6ED9EBA1,
            (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15),
            (3, 9, 11, 15),
        ),
    )
    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    for offset in range(0, len(message), 64):
        words = struct.unpack("<16I", bytes(message[offset : offset + 64]))
        regs = list(state)
        for function, constant, order, shifts in rounds:
            for i, k in enumerate(order):
                # Registers rotate a, d, c, b: the target and its three successors.
                t = (-i) % 4
                x, y, z = regs[(t + 1) % 4], regs[(t + 2) % 4], regs[(t + 3) % 4]
                regs[t] = _rotl(regs[t] + function(x, y, z) + words[k] + constant, shifts[i % 4])
        state = [(s + r) & 0xFFFFFFFF for s, r in zip(state, regs)]
    return struct.pack("<4I", *state)


def nt_hash(password: str) -> str:
    """The NT hash Samba stores for a password: MD4(UTF-16LE), upper-case hex."""
    return md4(password.encode("utf-16-le")).hex().upper()


def nt_fingerprint(user: str, password: str) -> str:
    """What the fact `samba.SambaUsers` reports for `user` when its password is `password`."""
    return hashlib.sha256(f"{user}:{nt_hash(password)}".encode()).hexdigest()


def _unmask(value: str | HiddenValue) -> str:
    return value.unmask() if isinstance(value, HiddenValue) else str(value)


# --- Samba users ------------------------------------------------------------------------------


SMB_CONF = "/etc/samba/smb.conf"
SAMBA_INCLUDE = "/etc/samba/homecloud.conf"


@operation()
def user(
    user: str,
    password: str | HiddenValue | None = None,
    present: bool = True,
):
    """
    A Samba user: a Unix account (no login shell, no home; an existing account is kept as it
    is) and its Samba password, set through stdin only when it differs from the one Samba has.

    + user: the user name
    + password: the password (wrap it in ``HiddenValue``); required when present
    + present: False removes the user from Samba's database (the Unix account is kept)

    **Example:**

    .. code:: python

        samba.user(user="alice", password=HiddenValue(secret("samba_alice")))
    """
    if not USER_RE.fullmatch(user):
        raise OperationError(f"`{user}` is not a valid user name")

    samba_users = host.get_fact(SambaUsers)
    existing = samba_users.get(user)

    if not present:
        if existing:
            yield StringCommand("pdbedit", "--delete", "--user", shlex.quote(user))
        else:
            host.noop(f"Samba user {user} is absent")
        return

    if password is None or not _unmask(password):
        raise OperationError(f"Samba user {user}: a password is required")
    clear = _unmask(password)
    if "\n" in clear or "\r" in clear:
        raise OperationError(f"Samba user {user}: the password may not contain a line break")

    yield from account._inner(user=user)

    # smbpasswd -s reads the new password twice from stdin; nothing secret is in the command.
    stdin = [clear, clear]
    if existing is None:
        yield StringCommand("smbpasswd", "-a", "-s", shlex.quote(user), _stdin=stdin)
    else:
        changed = False
        if existing["fingerprint"] != nt_fingerprint(user, clear):
            yield StringCommand("smbpasswd", "-s", shlex.quote(user), _stdin=stdin)
            changed = True
        if existing["disabled"]:
            yield StringCommand("smbpasswd", "-e", shlex.quote(user))
            changed = True
        if not changed:
            host.noop(f"Samba user {user} exists with this password")


# --- Shares -----------------------------------------------------------------------------------


PROTOCOLS = ("SMB2_10", "SMB3", "SMB3_00", "SMB3_02", "SMB3_11")
DEBIAN_SHARES = ("homes", "printers", "print$")


def render_shares(
    shares: list[dict],
    users: list[str],
    force_user: str,
    force_group: str,
    workgroup: str,
    encrypt: str = "desired",
    min_protocol: str = "SMB2_10",
    default_shares: bool = False,
    netbios: bool = False,
) -> str:
    """The managed include file: a [global] override and one section per share."""
    guest = any(share.get("guest_ok") for share in shares)
    lines = [
        HEADER,
        "# Included at the end of smb.conf's [global]; testparm -s shows the effective configuration.",
        "[global]",
        f"   workgroup = {workgroup}",
        # Unknown users and wrong passwords are refused; guests only where a share allows them.
        f"   map to guest = {'Bad User' if guest else 'Never'}",
    ]
    if not guest:
        # No anonymous (null) sessions either: not even the list of shares without logging in.
        lines.append("   restrict anonymous = 2")
    lines += [
        # No SMB1 or SMB 2.0.2; every session signed; SMB3 encryption offered (or required).
        f"   server min protocol = {min_protocol}",
        "   server signing = mandatory",
        f"   server smb encrypt = {encrypt}",
        # No printing: no printer shares, no spooler.
        "   load printers = no",
        "   printing = bsd",
        "   printcap name = /dev/null",
        "   disable spoolss = yes",
    ]
    if not netbios:
        # SMB over TCP 445 only: no NetBIOS name service (nmbd), no port 139.
        lines += ["   disable netbios = yes", "   smb ports = 445"]
    lines.append("")
    if not default_shares:
        # Debian's [homes], [printers] and [print$] (defined after this include) are kept in
        # smb.conf but switched off: a section named twice adds up, and nothing there sets these.
        for section in DEBIAN_SHARES:
            lines += [f"[{section}]", "   available = no", "   browseable = no", ""]
    for share in shares:
        valid = list(share.get("valid_users") or [])
        if not valid and not share.get("guest_ok"):
            valid = list(users)
        lines += [
            f"[{share['name']}]",
            f"   path = {share['path']}",
            "   browseable = yes",
            f"   read only = {'yes' if share.get('read_only') else 'no'}",
            f"   guest ok = {'yes' if share.get('guest_ok') else 'no'}",
        ]
        if valid:
            lines.append(f"   valid users = {' '.join(valid)}")
        lines += [
            # Every file lands with the dnas owner, whoever writes it (Syncthing, NFS see it),
            # readable and writable by the dnas group only.
            f"   force user = {force_user}",
            f"   force group = {force_group}",
            "   create mask = 0660",
            "   directory mask = 0770",
            "",
        ]
    return "\n".join(lines)


def _ere_escape(text: str) -> str:
    return re.sub(r"([.\[\]\\*^$+?(){}|])", r"\\\1", text)


def _normalized(lines) -> list[str]:
    return [line.rstrip() for line in lines if line.strip()]


def _include_pattern(include: str) -> str:
    """grep -E pattern of our include line, however it is spaced."""
    return f"^[[:space:]]*include[[:space:]]*=[[:space:]]*{_ere_escape(include)}[[:space:]]*$"


def _in_global(lines: list[str], include_re: re.Pattern) -> tuple[bool, bool]:
    """(our include line is there, every one of them is in [global] - or before any section)."""
    section = "global"
    found, in_global = False, True
    for line in lines:
        header = re.match(r"^\s*\[([^\]]*)\]", line)
        if header:
            section = header.group(1).strip().lower()
        elif include_re.match(line):
            found = True
            in_global = in_global and section == "global"
    return found, found and in_global


def _placed(smb_conf: str, include: str, line: str) -> str:
    """
    Shell printing smb.conf with our include line (awk variable `line`: a shell word) as the
    last line of [global] - before the first other section that follows it, or at the end -
    and no other copy of it.
    """
    program = (
        "/" + _include_pattern(include).replace("/", "\\/") + "/ { next } "
        "/^[[:space:]]*\\[/ { s = tolower($0); gsub(/[[:space:]]/, \"\", s); "
        "if (s == \"[global]\") g = 1; else if (g && !done) { print inc; done = 1 } } "
        "{ print } END { if (!done) print inc }"
    )
    return f"awk -v inc={line} {shlex.quote(program)} {shlex.quote(smb_conf)}"


def _testparm_check(smb_conf: str, include: str) -> str:
    """
    Check (``{}``: the include file to test) for ``system.write_file``: the live smb.conf
    with an include of ``{}`` where ours goes (the end of [global]), in a temporary file that
    testparm checks; testparm's complaints go to stderr.
    """
    return (
        "tmp=$(mktemp) && " + _placed(smb_conf, include, "'include = '{}") + ' > "$tmp" && '
        'if testparm -s "$tmp" > /dev/null 2> "$tmp.err"; then rm -f "$tmp" "$tmp.err"; '
        'else cat "$tmp.err" >&2; rm -f "$tmp" "$tmp.err"; false; fi'
    )


@operation()
def config(
    shares: list[dict],
    users: list[str],
    force_user: str,
    force_group: str,
    workgroup: str = "WORKGROUP",
    encrypt: str = "desired",
    min_protocol: str = "SMB2_10",
    default_shares: bool = False,
    netbios: bool = False,
    smb_conf: str = SMB_CONF,
    include: str = SAMBA_INCLUDE,
    present: bool = True,
):
    """
    Serve shares through a managed include file of smb.conf, included at the end of its
    ``[global]`` section (a line found elsewhere, as older versions appended it at the end of
    the file, inside ``[print$]``, is moved there). The candidate include file
    (``<include>.homecloud-new``) is checked with ``testparm -s`` (in a copy of smb.conf that
    includes it) before it replaces the live one; when testparm refuses it the operation fails
    and nothing live changes. Backups (``system.backup_command``: ``<path>.<timestamp>``, mode
    0600, never overwritten): smb.conf, the distribution's file, before its include line is
    added or removed; the include file when it is replaced (homecloud writes it, but a user may
    have edited shares in it by hand). Reload Samba when this operation changed something.

    + shares: list of {name, path (absolute), read_only, valid_users, guest_ok}
    + users: every Samba user (the valid users of a share whose valid_users is empty)
    + force_user: the owner of every file written through Samba
    + force_group: the group of every file written through Samba
    + workgroup: the SMB workgroup
    + encrypt: SMB3 encryption, ``desired`` (offered; clients that can use it) or ``required``
      (clients without it are refused); signing is always mandatory
    + min_protocol: the oldest dialect served (``SMB2_10`` or an SMB3 one; never SMB1/2.0.2)
    + default_shares: keep Debian's ``[homes]``, ``[printers]`` and ``[print$]``; False switches
      them off (``available = no`` in the include file; smb.conf is not edited for it). Printing
      is off either way (``load printers = no``, no spooler)
    + netbios: serve NetBIOS (nmbd, port 139); False: SMB over TCP 445 only. Stop nmbd yourself
    + smb_conf: the distribution's smb.conf (kept; gets one include line)
    + include: the managed include file
    + present: False removes the include line and moves the include file to
      ``<include>.<timestamp>`` (the shared data is not touched)

    **Example:**

    .. code:: python

        samba.config(
            shares=[{"name": "data", "path": "/srv/dnas/data", "valid_users": ["alice"]}],
            users=["alice"],
            force_user="dnas",
            force_group="dnas",
        )
    """
    include_re = re.compile(rf"^\s*include\s*=\s*{re.escape(include)}\s*$")
    smb_lines = host.get_fact(FileContents, path=smb_conf)
    if smb_lines is None:
        if present:
            raise OperationError(f"{smb_conf} is missing: install samba first")
        smb_lines = []
    included, in_global = _in_global(smb_lines, include_re)
    current = host.get_fact(FileContents, path=include)

    if not present:
        if not included and current is None:
            host.noop("Samba shares of homecloud are absent")
            return
        if included:
            yield backup_command(smb_conf)
            yield (
                f"tmp=$(mktemp) && grep -v -E {shlex.quote(_include_pattern(include))} {shlex.quote(smb_conf)} > \"$tmp\"; "
                f"cat \"$tmp\" > {shlex.quote(smb_conf)} && rm -f \"$tmp\""
            )
        if current is not None:
            # Moved aside, not deleted: it may hold edits made by hand.
            yield move_aside(include)
        return

    names = set()
    for share in shares:
        if not isinstance(share, dict) or not {"name", "path"} <= set(share):
            raise OperationError(f"share {share!r}: name and path are required")
        if not SHARE_NAME_RE.fullmatch(share["name"]):
            raise OperationError(f"share name `{share['name']}` is invalid")
        if share["name"].lower() in names:
            raise OperationError(f"share `{share['name']}` is defined twice")
        names.add(share["name"].lower())
        if not str(share["path"]).startswith("/") or "\n" in str(share["path"]):
            raise OperationError(f"share `{share['name']}`: path must be absolute (one line)")
        for user_name in share.get("valid_users") or []:
            if not USER_RE.fullmatch(user_name):
                raise OperationError(f"share `{share['name']}`: `{user_name}` is not a valid user name")
    for value in (*users, force_user, force_group):
        if not USER_RE.fullmatch(value):
            raise OperationError(f"`{value}` is not a valid user or group name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", workgroup):
        raise OperationError(f"workgroup `{workgroup}` is invalid (1-15 letters, digits, ._-)")
    if encrypt not in ("desired", "required"):
        raise OperationError(f"encrypt `{encrypt}` is not desired or required")
    if min_protocol not in PROTOCOLS:
        raise OperationError(f"min_protocol `{min_protocol}` is not one of {', '.join(PROTOCOLS)}")

    wanted = render_shares(shares, users, force_user, force_group, workgroup, encrypt, min_protocol, default_shares, netbios)
    check = _testparm_check(smb_conf, include)
    up_to_date = current is not None and _normalized(current) == _normalized(wanted.splitlines())

    if not up_to_date:
        # Our file, but a user may have edited the shares by hand: the replaced one is kept.
        yield from replace_file(
            include, wanted.rstrip("\n") + "\n", current is not None, check=check, check_name="testparm", backup=True
        )
    elif not in_global:
        yield check_command(check, include, smb_conf, "testparm")

    if not in_global:
        # The distribution's smb.conf (and the user's edits) is kept; only our line is added
        # at the end of [global] (or moved there).
        yield backup_command(smb_conf)
        yield (
            "tmp=$(mktemp) && " + _placed(smb_conf, include, shlex.quote(f"include = {include}"))
            + f' > "$tmp" && cat "$tmp" > {shlex.quote(smb_conf)} && rm -f "$tmp"'
        )

    if up_to_date and in_global:
        host.noop("Samba shares are up to date")
