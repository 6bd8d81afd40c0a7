"""
Samba on the dnas nodes, proven from the controller with a real SMB client (`smbclient`):

- every share of the inventory is in the effective configuration (`testparm -s` on the node,
  parsed by the `samba.SambaShares` fact) with the dnas user forced;
- each Samba user of the inventory lists, puts and gets a file in each share it may use, and
  the file lands on the node owned by dnas_uid/dnas_gid;
- guests, unknown users, wrong passwords and users outside a share's valid users are refused;
- no password shows in the deploy's output; a second run changes nothing.

Credentials go to smbclient in an authentication file (mode 0600), not on its command line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import uuid
from posixpath import join, normpath

import pytest

from facts.samba import SambaShares
from homecloud.model import node_ip
from lab.results import PyinfraRunError

pytestmark = pytest.mark.skipif(shutil.which("smbclient") is None, reason="smbclient is not installed on the controller (apt-get install smbclient)")


# --- Inventory and nodes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nas(deployed, dnas_nodes):
    """(spec, testinfra host) of every dnas node with Samba on, in inventory order."""
    return dnas_nodes("samba_enabled")


def share_path(spec, share) -> str:
    return normpath(join(spec.data["dnas_path"], share["path"]))


def allowed_users(spec, share) -> list[str]:
    users = sorted(spec.data.get("samba_users") or {})
    return list(share.get("valid_users") or users)


# --- smbclient --------------------------------------------------------------------------------


def smbclient(ip: str, share: str, commands: str, user: str | None = None, password: str | None = None, cwd=None, options=()):
    """Run smbclient; the credentials go in a 0600 authentication file, never in argv."""
    args = ["smbclient", f"//{ip}/{share}", "-c", commands, *options]
    auth = None
    try:
        if user is None:
            args.append("-N")
        else:
            fd, auth = tempfile.mkstemp(prefix="hc-smb-auth-")
            with os.fdopen(fd, "w") as f:
                f.write(f"username = {user}\npassword = {password}\n")
            args += ["-A", auth]
        return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)
    finally:
        if auth:
            os.unlink(auth)


def refused(proc) -> bool:
    text = proc.stdout + proc.stderr
    return proc.returncode != 0 and any(
        code in text for code in ("NT_STATUS_ACCESS_DENIED", "NT_STATUS_LOGON_FAILURE", "NT_STATUS_ACCOUNT_DISABLED")
    )


# --- Tests ------------------------------------------------------------------------------------


def test_testparm_reports_every_share_with_the_dnas_owner(nas):
    for spec, host in nas:
        shares = SambaShares().process(host.check_output("testparm -s 2>/dev/null").splitlines())
        dnas_user = spec.data["dnas_user"]
        for share in spec.data.get("samba_shares") or []:
            section = shares.get(share["name"])
            assert section is not None, f"{spec.name}: share {share['name']} missing from testparm -s: {sorted(shares)}"
            assert section["path"] == share_path(spec, share)
            assert section["force user"] == dnas_user
            assert section["force group"] == dnas_user
            # testparm leaves out values equal to the defaults (read only = Yes, guest ok = No).
            assert section.get("read only", "Yes") == ("Yes" if share.get("read_only") else "No")
            assert section.get("guest ok", "No") == ("Yes" if share.get("guest_ok") else "No")
            if not share.get("guest_ok"):
                assert sorted(section["valid users"].split()) == sorted(allowed_users(spec, share))


def test_each_user_lists_puts_and_gets_a_file_in_each_share(nas, tmp_path):
    for spec, host in nas:
        ip = node_ip(spec)
        passwords = spec.data.get("samba_users") or {}
        for share in spec.data.get("samba_shares") or []:
            for user in allowed_users(spec, share):
                name = f"hc-smb-{user}-{uuid.uuid4().hex[:8]}.txt"
                text = f"written by {user} into {share['name']} on {spec.name}\n"
                (tmp_path / name).write_text(text)
                listed = smbclient(ip, share["name"], "ls", user, passwords[user])
                assert listed.returncode == 0, f"{spec.name}/{share['name']} as {user}: {listed.stdout}{listed.stderr}"

                put = smbclient(ip, share["name"], f"put {name}", user, passwords[user], cwd=tmp_path)
                if share.get("read_only"):
                    assert put.returncode != 0 or "NT_STATUS" in put.stdout + put.stderr
                    continue
                assert put.returncode == 0 and "NT_STATUS" not in put.stdout + put.stderr, put.stdout + put.stderr

                back = tmp_path / f"back-{name}"
                got = smbclient(ip, share["name"], f"get {name} {back.name}", user, passwords[user], cwd=tmp_path)
                assert got.returncode == 0, got.stdout + got.stderr
                assert back.read_text() == text

                listed = smbclient(ip, share["name"], "ls", user, passwords[user])
                assert name in listed.stdout

                on_node = join(share_path(spec, share), name)
                owner = host.check_output(f"stat -c %u:%g {on_node}")
                assert owner == f"{spec.data['dnas_uid']}:{spec.data['dnas_gid']}", f"{on_node} is owned by {owner}"
                assert host.file(on_node).content_string == text

                deleted = smbclient(ip, share["name"], f"del {name}", user, passwords[user])
                assert deleted.returncode == 0, deleted.stdout + deleted.stderr


def smb2_negotiate(ip: str, dialects: list[int]) -> tuple[int, int, int] | None:
    """One SMB2 NEGOTIATE (signing enabled, not required; no SMB 3.1.1 contexts) to port 445:
    (NT status, the server's SecurityMode, the dialect it chose), or None when it hangs up."""
    body = struct.pack("<HHHHI16s8s", 36, len(dialects), 0x01, 0, 0, uuid.uuid4().bytes, b"\0" * 8)
    body += b"".join(struct.pack("<H", d) for d in dialects)
    header = b"\xfeSMB" + struct.pack("<HHIHHIIQIIQ16s", 64, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, b"\0" * 16)
    packet = header + body
    with socket.create_connection((ip, 445), timeout=10) as sock:
        sock.sendall(struct.pack(">I", len(packet)) + packet)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    reply = data[4:]
    (status,) = struct.unpack_from("<I", reply, 8)
    if status != 0:
        return status, 0, 0
    _size, security_mode, dialect = struct.unpack_from("<HHH", reply, 64)
    return status, security_mode, dialect


def _first_login(spec):
    """(share, user, password) of a share and a user allowed in it."""
    passwords = spec.data.get("samba_users") or {}
    for share in spec.data.get("samba_shares") or []:
        for user in allowed_users(spec, share):
            return share["name"], user, passwords[user]
    pytest.skip("no Samba share with a user in this inventory")


def test_old_dialects_and_unsigned_clients_are_refused_encryption_is_offered(nas):
    for spec, host in nas:
        ip = node_ip(spec)
        share, user, password = _first_login(spec)
        plain = smbclient(ip, share, "ls", user, password)
        assert plain.returncode == 0, plain.stdout + plain.stderr
        smb1 = smbclient(ip, share, "ls", user, password, options=["--option=client min protocol=NT1", "-m", "NT1"])
        assert smb1.returncode != 0 and "NT_STATUS_" in smb1.stdout + smb1.stderr, f"{spec.name} serves SMB1: {smb1.stdout}{smb1.stderr}"
        smb202 = smbclient(ip, share, "ls", user, password, options=["--option=client min protocol=SMB2_02", "-m", "SMB2_02"])
        assert smb202.returncode != 0, f"{spec.name} serves SMB 2.0.2: {smb202.stdout}{smb202.stderr}"
        # smbclient signs SMB2+ whatever "client signing" says when the server requires it, so
        # the server's own answer is read: a raw SMB2 NEGOTIATE, as a client offering signing
        # but not requiring it. The server must answer "signing required" (the client must then
        # sign every request, or be refused), and pick no 2.0.2 dialect.
        status, security_mode, dialect = smb2_negotiate(ip, [0x0210, 0x0300, 0x0302])
        assert status == 0 and dialect in (0x0210, 0x0300, 0x0302), (hex(status), dialect)
        assert security_mode & 0x02, f"{spec.name} does not require signing (SMB2 SecurityMode {security_mode:#x})"
        only_202 = smb2_negotiate(ip, [0x0202])
        assert only_202 is None or only_202[0] != 0, f"{spec.name} negotiates SMB 2.0.2: {only_202}"
        unsigned = smbclient(ip, share, "ls", user, password, options=["--option=client signing=disabled", "-m", "SMB2"])
        assert unsigned.returncode == 0, "smbclient (which signs anyway) failed: " + unsigned.stdout + unsigned.stderr
        sealed = smbclient(ip, share, "ls", user, password, options=["--option=client smb encrypt=required"])
        assert sealed.returncode == 0, f"{spec.name} does not offer SMB3 encryption: {sealed.stdout}{sealed.stderr}"
        want = spec.data.get("samba_encrypt", "desired")
        signing = host.check_output("testparm -s --parameter-name='server signing' 2>/dev/null").lower()
        encrypt = host.check_output("testparm -s --parameter-name='server smb encrypt' 2>/dev/null").lower()
        assert signing in ("mandatory", "required") and encrypt == want, (signing, encrypt)


def test_no_homes_or_printers_and_no_netbios(nas):
    for spec, host in nas:
        share, user, password = _first_login(spec)
        fd, auth = tempfile.mkstemp(prefix="hc-smb-auth-")
        with os.fdopen(fd, "w") as f:
            f.write(f"username = {user}\npassword = {password}\n")
        try:
            listing = subprocess.run(["smbclient", "-L", f"//{node_ip(spec)}", "-A", auth], capture_output=True, text=True, timeout=60)
            home = subprocess.run(["smbclient", f"//{node_ip(spec)}/{user}", "-A", auth, "-c", "ls"], capture_output=True, text=True, timeout=60)
        finally:
            os.unlink(auth)
        assert listing.returncode == 0, listing.stdout + listing.stderr
        names = {line.split()[0].lower() for line in listing.stdout.splitlines() if line.startswith("\t") and line.split()}
        assert share.lower() in names, f"{spec.name}: {share} is not listed: {listing.stdout}"
        assert not names & {"homes", "printers", "print$", user}, f"{spec.name} lists Debian's default shares: {listing.stdout}"
        assert home.returncode != 0, f"{spec.name}: {user} gets a [homes] share: {home.stdout}"
        if not spec.data.get("samba_netbios"):
            assert host.run("systemctl is-active --quiet nmbd").rc != 0, f"{spec.name}: nmbd runs"
            assert not host.run("ss -Hltnu '( sport = :139 or sport = :137 or sport = :138 )'").stdout.strip(), f"{spec.name}: a NetBIOS port is open"


def test_guest_is_refused(nas):
    for spec, _ in nas:
        if not any(share.get("guest_ok") for share in spec.data.get("samba_shares") or []):
            # Without a guest share, anonymous sessions are refused: not even the share list.
            listing = subprocess.run(["smbclient", "-L", f"//{node_ip(spec)}", "-N"], capture_output=True, text=True, timeout=60)
            assert listing.returncode != 0, f"{spec.name} lists its shares to anyone: {listing.stdout}"
        for share in spec.data.get("samba_shares") or []:
            if share.get("guest_ok"):
                continue
            proc = smbclient(node_ip(spec), share["name"], "ls")
            assert refused(proc), f"guest got into {spec.name}/{share['name']}: {proc.stdout}{proc.stderr}"


def test_wrong_password_and_unknown_user_are_refused(nas):
    for spec, _ in nas:
        for share in spec.data.get("samba_shares") or []:
            for user in allowed_users(spec, share)[:1]:
                proc = smbclient(node_ip(spec), share["name"], "ls", user, "wrong-" + uuid.uuid4().hex)
                assert refused(proc), f"{user} with a wrong password got into {share['name']}: {proc.stdout}"
                assert "NT_STATUS_LOGON_FAILURE" in proc.stdout + proc.stderr
            proc = smbclient(node_ip(spec), share["name"], "ls", "nosuchuser", "whatever-" + uuid.uuid4().hex)
            if not share.get("guest_ok"):
                assert refused(proc), f"an unknown user got into {share['name']}: {proc.stdout}"


def test_user_outside_valid_users_is_refused(nas):
    checked = 0
    for spec, _ in nas:
        passwords = spec.data.get("samba_users") or {}
        for share in spec.data.get("samba_shares") or []:
            outsiders = sorted(set(passwords) - set(share.get("valid_users") or passwords))
            for user in outsiders:
                proc = smbclient(node_ip(spec), share["name"], "ls", user, passwords[user])
                assert refused(proc), f"{user} is not a valid user of {share['name']} but got in: {proc.stdout}"
                checked += 1
    if not checked:
        pytest.skip("no share restricts valid_users to a subset of samba_users in this inventory")


def test_passwords_never_show_in_the_deploy_output(nas, deployed):
    if deployed.get("results") is None:
        pytest.skip("no deploy in this session (--inventory): no output to check")
    # The parsed results and pyinfra's whole log (stderr) of the session's deploy.
    output = str(deployed)
    for spec, _ in nas:
        for user, password in (spec.data.get("samba_users") or {}).items():
            assert password not in output, f"the password of {user} shows in the deploy output"


def test_second_run_changes_nothing(nas, pyinfra_run):
    result = pyinfra_run("deploys/samba.py")
    changed = {op["name"]: op["success"] for op in result["results"]["operations"] if op["success"]}
    errors = {op["name"]: op["error"] for op in result["results"]["operations"] if op["error"]}
    assert not errors, errors
    assert not changed, f"a second run changed: {changed}"


@pytest.mark.destructive
def test_a_config_testparm_refuses_never_replaces_the_live_one(nas, pyinfra_run):
    """Break smb.conf by hand, ask for one more share: the deploy fails, the live include stays."""
    spec, host = nas[0]
    include = "/etc/samba/homecloud.conf"
    before = host.file(include).content_string
    saved = "/root/smb.conf.hc-test"
    assert host.run(f"cp -p /etc/samba/smb.conf {saved}").rc == 0
    try:
        # A value testparm rejects ("value is not boolean") in the distribution's [print$] share:
        # pdbedit/smbpasswd load only [global] and keep working, testparm refuses the file.
        assert host.run(r"sed -i 's/^\[print\$\]$/[print$]\n   read only = maybe/' /etc/samba/smb.conf").rc == 0
        assert host.run("testparm -s /etc/samba/smb.conf").rc != 0, "the hand-made break did not break smb.conf"
        shares = [dict(s) for s in spec.data["samba_shares"]]
        shares.append({"name": "hcextra", "path": shares[0]["path"], "read_only": True, "valid_users": [], "guest_ok": False})
        try:
            result = pyinfra_run("deploys/samba.py", "--limit", spec.name, "--data", "samba_shares=" + json.dumps(shares))
            log = result["stderr"]
            assert result["returncode"] != 0
        except PyinfraRunError as e:  # the only host failed: pyinfra may stop before its JSON
            log = str(e)
        assert f"homecloud: testparm rejected the new {include}; {include} was not changed" in log, log[-3000:]
        assert host.file(include).content_string == before, "the live include file changed"
        assert "hcextra" not in host.file(include).content_string
        # The rejected candidate is left to read (system.replace_file), it is not included anywhere.
        assert "hcextra" in host.file(include + ".homecloud-new").content_string
        assert include + ".homecloud-new" not in host.file("/etc/samba/smb.conf").content_string
    finally:
        host.run(f"cp -p {saved} /etc/samba/smb.conf && rm -f {saved} {include}.homecloud-new")
    again = pyinfra_run("deploys/samba.py", "--limit", spec.name)
    assert again["returncode"] == 0
    assert not [op["name"] for op in again["results"]["operations"] if op["success"]], "repairing smb.conf needed changes"


def _active_since(host, unit: str) -> str:
    return host.run(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").stdout.strip()


def test_a_restart_lost_with_a_failed_run_happens_on_the_next_run(nas, pyinfra_run):
    """A run that wrote smb.conf's include and died before restarting smbd (here: the file is
    touched, smbd left as it was): the next run restarts smbd, the one after changes nothing."""
    spec, host = nas[0]
    before = _active_since(host, "smbd")
    assert host.run("touch /etc/samba/homecloud.conf").rc == 0
    result = pyinfra_run("deploys/samba.py", "--limit", spec.name)
    assert result["returncode"] == 0
    changed = [op["name"].split(" | ")[-1] for op in result["results"]["operations"] if op["success"]]
    assert changed == ["Samba runs its current configuration"], changed
    assert _active_since(host, "smbd") != before, "smbd was not restarted"
    again = pyinfra_run("deploys/samba.py", "--limit", spec.name)
    assert not [op["name"] for op in again["results"]["operations"] if op["success"]], "the restart is not idempotent"
