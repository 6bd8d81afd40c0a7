#!/usr/bin/python3
"""
homecloud-backup: runs restic for the targets in /etc/homecloud/backup/config.json (written by
homecloud's backup layer, operations/backup.py; this file is uploaded as
/usr/local/lib/homecloud/homecloud-backup). Standard library only: it runs on the nodes.

    homecloud-backup run                 back up to every target, then forget --prune (retention)
    homecloud-backup check               restic check --read-data-subset=<subset> on every target
    homecloud-backup snapshots [TARGET]  list the snapshots
    homecloud-backup restore --target T --snapshot ID --to DIR [--path P ...] [--in-place]
                                         [--node-replaced]

The repository password is read by restic from RESTIC_PASSWORD_FILE (0600); it never appears in
an argument or the environment of a logged command. One run at a time (flock); a failed target
makes the run exit 1 with `target NAME: reason` on stderr (the journal of the unit), after the
other targets were tried. The outcome of each target is kept in the status file (JSON) and, when
configured, written for node-exporter's textfile collector.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

CONFIG = "/etc/homecloud/backup/config.json"
LOCK = "/run/homecloud-backup.lock"


def log(message):
    print(message, file=sys.stderr, flush=True)


def load(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def save(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Failed(Exception):
    pass


def environment(config, target):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
    env["RESTIC_PASSWORD_FILE"] = config["password_file"]
    env["RESTIC_CACHE_DIR"] = "/var/cache/homecloud-backup"
    if target.get("env_file"):
        # S3 credentials: KEY=VALUE lines in a 0600 file, into restic's environment only.
        with open(target["env_file"]) as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key.startswith("AWS_"):
                    env[key] = value
    return env


def restic(config, target, *args, capture=False):
    argv = ["restic", "--repo", target["repo"]]
    if target["type"] == "sftp":
        argv += ["-o", "sftp.command=" + " ".join(target["ssh"])]
    argv += list(args)
    proc = subprocess.run(argv, env=environment(config, target), stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr or "").strip().splitlines() if l.strip()]
        raise Failed(f"restic {args[0]} failed (exit {proc.returncode}): {' | '.join(lines[-3:]) or 'no message'}")
    return proc.stdout


class Mounted:
    """A local target's disk, mounted for the run only (when it has a device)."""

    def __init__(self, target):
        self.target = target
        self.mounted = False

    def __enter__(self):
        target = self.target
        if target["type"] != "local" or not target.get("device"):
            return self
        point = target["mountpoint"]
        os.makedirs(point, exist_ok=True)
        if subprocess.run(["mountpoint", "-q", point]).returncode != 0:
            proc = subprocess.run(["mount", "-t", target["fstype"], target["device"], point], stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise Failed(f"cannot mount {target['device']} at {point}: {proc.stderr.strip() or 'no message'} (is the disk plugged in?)")
            self.mounted = True
        return self

    def __exit__(self, *exc):
        if self.mounted:
            subprocess.run(["umount", self.target["mountpoint"]])


def ensure_repo(config, target):
    try:
        restic(config, target, "cat", "config", capture=True)
    except Failed as first:
        if "does not exist" not in str(first) and "unable to open config file" not in str(first) and "Is there a repository" not in str(first):
            raise
        log(f"target {target['name']}: no repository yet, creating it")
        restic(config, target, "init")


def backup_one(config, target, status):
    entry = status.setdefault(target["name"], {})
    entry["last_attempt"] = int(time.time())
    with Mounted(target):
        ensure_repo(config, target)
        paths = [p for p in config["paths"] if os.path.exists(p)]
        args = ["backup", "--host", config["node"], "--tag", "homecloud", "--json"]
        for pattern in config["excludes"]:
            args += ["--exclude", pattern]
        out = restic(config, target, *args, *paths, capture=True)
        summary = next((json.loads(l) for l in out.splitlines() if '"message_type":"summary"' in l.replace(" ", "")), {})
        keep = config["keep"]
        restic(
            config, target, "forget", "--prune", "--host", config["node"], "--tag", "homecloud",
            "--keep-daily", str(keep["daily"]), "--keep-weekly", str(keep["weekly"]), "--keep-monthly", str(keep["monthly"]),
        )
        stats = json.loads(restic(config, target, "stats", "--json", "--mode", "raw-data", capture=True) or "{}")
    entry.update(
        last_success=int(time.time()),
        snapshot=summary.get("snapshot_id", ""),
        files=summary.get("total_files_processed", 0),
        bytes=summary.get("total_bytes_processed", 0),
        repository_bytes=stats.get("total_size", 0),
        error="",
    )


def write_textfile(config, status):
    path = config.get("textfile")
    if not path:
        return
    lines = [
        "# HELP homecloud_backup_last_success_timestamp_seconds Last successful backup to a target.",
        "# TYPE homecloud_backup_last_success_timestamp_seconds gauge",
    ]
    for name, entry in sorted(status.items()):
        lines.append(f'homecloud_backup_last_success_timestamp_seconds{{target="{name}"}} {entry.get("last_success", 0)}')
    lines += ["# HELP homecloud_backup_repository_bytes Size of the repository.", "# TYPE homecloud_backup_repository_bytes gauge"]
    for name, entry in sorted(status.items()):
        lines.append(f'homecloud_backup_repository_bytes{{target="{name}"}} {entry.get("repository_bytes", 0)}')
    lines += ["# HELP homecloud_backup_failed Whether the last attempt failed.", "# TYPE homecloud_backup_failed gauge"]
    for name, entry in sorted(status.items()):
        lines.append(f'homecloud_backup_failed{{target="{name}"}} {1 if entry.get("error") else 0}')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def cmd_run(config, args):
    status = load(config["status"], {})
    failed = []
    for target in config["targets"]:
        try:
            backup_one(config, target, status)
            log(f"target {target['name']}: backup done, snapshot {status[target['name']]['snapshot']}")
        except Failed as e:
            status[target["name"]]["error"] = str(e)
            failed.append(f"target {target['name']}: {e}")
    save(config["status"], status)
    write_textfile(config, status)
    for line in failed:
        log("BACKUP FAILED: " + line)
    return 1 if failed else 0


def cmd_check(config, args):
    failed = []
    for target in config["targets"]:
        try:
            with Mounted(target):
                restic(config, target, "check", f"--read-data-subset={config['check_subset']}")
            log(f"target {target['name']}: check passed")
        except Failed as e:
            failed.append(f"target {target['name']}: {e}")
    for line in failed:
        log("BACKUP CHECK FAILED: " + line)
    return 1 if failed else 0


def find_target(config, name):
    targets = {t["name"]: t for t in config["targets"]}
    if name is None:
        return config["targets"][0]
    if name not in targets:
        raise Failed(f"no target {name!r} (have: {', '.join(targets)})")
    return targets[name]


def cmd_snapshots(config, args):
    target = find_target(config, args[0] if args else None)
    with Mounted(target):
        print(restic(config, target, "snapshots", "--host", config["node"], capture=True), end="")
    return 0


def _stop(units, action):
    for unit in units:
        subprocess.run(["systemctl", action, unit], stderr=subprocess.DEVNULL)


def cmd_restore(config, args):
    """
    Into --to (a folder of its own, created empty: never over existing files), or with
    --in-place over the original paths: through a staging folder, a file is put back only where
    it is missing or not newer than the snapshot's copy (never deletes, never overwrites newer
    work). --node-replaced: in place, the Syncthing identity and config are put back even when
    the fresh node's are newer, with Syncthing stopped meanwhile.
    """
    opts = {"--path": []}
    key = None
    for arg in args:
        if key:
            opts[key].append(arg) if key == "--path" else opts.__setitem__(key, arg)
            key = None
        elif arg in ("--in-place", "--node-replaced"):
            opts[arg] = True
        else:
            key = arg
    target = find_target(config, opts.get("--target"))
    snapshot = opts.get("--snapshot", "latest")
    in_place = opts.get("--in-place") or opts.get("--node-replaced")
    dest = opts.get("--to")
    if not in_place and not dest:
        raise Failed("give --to DIR (or --in-place)")
    if not in_place and os.path.exists(dest) and os.listdir(dest):
        raise Failed(f"{dest} is not empty: restore into a new folder (or use --in-place)")
    staging = dest if not in_place else os.path.join(config["staging"], "restore-" + str(os.getpid()))
    includes = []
    for path in opts["--path"]:
        includes += ["--include", path]
    with Mounted(target):
        info = json.loads(restic(config, target, "snapshots", "--json", "--host", config["node"], snapshot, capture=True) or "[]")
        if not info:
            raise Failed(f"no snapshot {snapshot} of {config['node']} on target {target['name']}")
        restic(config, target, "restore", info[-1]["id"], "--target", staging, *includes)
    if not in_place:
        log(f"restored snapshot {info[-1]['short_id']} into {dest}")
        return 0
    when = info[-1]["time"]
    stamp = _parse_time(when)
    identity = tuple(config.get("identity", []))
    units = config.get("units", []) if opts.get("--node-replaced") else []
    _stop(units, "stop")
    put, kept = 0, []
    try:
        for root, dirs, files in os.walk(staging):
            rel = os.path.relpath(root, staging)
            orig_dir = "/" if rel == "." else "/" + rel
            st = os.lstat(root)
            if rel != "." and not os.path.isdir(orig_dir):
                os.makedirs(orig_dir)
                os.chown(orig_dir, st.st_uid, st.st_gid)
                os.chmod(orig_dir, st.st_mode & 0o7777)
            for name in files:
                src, dst = os.path.join(root, name), os.path.join(orig_dir, name)
                forced = opts.get("--node-replaced") and dst.startswith(identity) if identity else False
                if os.path.lexists(dst) and os.lstat(dst).st_mtime > stamp and not forced:
                    kept.append(dst)
                    continue
                put_file(src, dst)
                put += 1
        for root, dirs, files in os.walk(staging, topdown=False):
            rel = os.path.relpath(root, staging)
            if rel != ".":
                st = os.lstat(root)
                orig = "/" + rel
                os.chown(orig, st.st_uid, st.st_gid)
                os.chmod(orig, st.st_mode & 0o7777)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _stop(units, "start")
    log(f"restored snapshot {info[-1]['short_id']} in place: {put} files put back, {len(kept)} newer files kept")
    for path in kept[:50]:
        log(f"kept (newer than the snapshot): {path}")
    return 0


def put_file(src, dst):
    """Move src over dst; across filesystems a copy with the same owner, mode and times."""
    try:
        os.replace(src, dst)
    except OSError:
        st = os.lstat(src)
        tmp = dst + ".homecloud-restore"
        shutil.copy2(src, tmp, follow_symlinks=False)
        os.chown(tmp, st.st_uid, st.st_gid, follow_symlinks=False)
        os.replace(tmp, dst)


def _parse_time(text):
    """restic's RFC 3339 time with nanoseconds and offset -> epoch seconds."""
    from datetime import datetime

    main, _, rest = text.partition(".")
    frac, offset = rest, ""
    for sign in ("+", "-", "Z"):
        if sign in rest:
            frac, offset = rest.split(sign, 1)[0], sign + rest.split(sign, 1)[1]
            break
    offset = "+00:00" if offset in ("Z", "") else offset
    value = datetime.fromisoformat(main + offset)
    return value.timestamp() + float("0." + (frac or "0"))


COMMANDS = {"run": cmd_run, "check": cmd_check, "snapshots": cmd_snapshots, "restore": cmd_restore}


def main(argv):
    if not argv or argv[0] not in COMMANDS:
        log(__doc__)
        return 2
    config = load(CONFIG, None)
    if config is None:
        log(f"BACKUP FAILED: no {CONFIG} (deploy the backup layer)")
        return 1
    with open(LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("BACKUP FAILED: another homecloud-backup run holds the lock")
            return 1
        try:
            return COMMANDS[argv[0]](config, argv[1:])
        except Failed as e:
            log(f"BACKUP FAILED: {e}")
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
