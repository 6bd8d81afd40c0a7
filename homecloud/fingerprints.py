"""
No silent rotation: before a deploy changes anything, make sure this controller holds the
secrets the cluster already has.

Each node keeps a root-only file (``/etc/homecloud/secret-fingerprints``, mode 0600) with a
random salt and, for each secret the node was given, HMAC-SHA256(salt, "<name>\\0<value>")
(``operations/secrets.py``, run by each layer after the configurations that carry the
secrets). No secret is stored there: a fingerprint only tells whether a value is the same.

`check_secrets(state)` runs at the top of every deploy (while pyinfra loads the deploy files,
before any operation runs): one read of the ``secrets.SecretFingerprints`` fact per host, in
parallel, with pyinfra's fact output switched off. It stops the run (InventoryError) when

- a node has a fingerprint for a secret and this controller's value does not match it, or
- this controller generated the value just now (its store had none) while the node already
  has that secret (a fingerprint, or for clusters deployed before fingerprints: a keepalived
  password in keepalived.conf, the Samba user in Samba's database),

unless that secret was marked with ``python -m homecloud.secrets rotate NAME``: then the
mismatch is accepted for that name only, and the run says which clients must be updated. A
rotation mark is cleared by the first run that finds every node holding the new value. A
brand-new cluster (no node has the secret) gets its generated secrets.

Secret names ("locations") are where the value sits in host data: ``keepalived_auth_pass``,
``samba_users.<user>``, ``syncthing_gui_password``, ``k3s_token``, ``backup_passphrase``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random
from dataclasses import dataclass, field
from typing import Any, Callable

from . import secrets as store
from .schema import InventoryError

K3S_GROUPS = ("k3s_servers", "k3s_agents")


def fingerprint(salt: str, name: str, value: str) -> str:
    """HMAC-SHA256 keyed by the node's salt of one secret (its name and value)."""
    return hmac.new(salt.encode(), f"{name}\0{value}".encode(), hashlib.sha256).hexdigest()


def node_secrets(data: Any, groups) -> dict[str, str]:
    """
    The secrets a host is given by the deploys (by location), from its data (host.data or a
    dict); the same conditions as deploys/keepalived.py, k3s.py, dnas.py and samba.py.
    """
    get = data.get
    groups = set(groups)
    found: dict[str, str] = {}
    if get("keepalived_enabled", True) and get("keepalived_group", "k3s_servers") in groups and get("keepalived_auth_pass"):
        found["keepalived_auth_pass"] = str(get("keepalived_auth_pass"))
    if groups & set(K3S_GROUPS) and get("k3s_install", "download") != "off" and get("k3s_token"):
        found["k3s_token"] = str(get("k3s_token"))
    if "dnas" in groups:
        if get("samba_enabled", True):
            for user, password in sorted((get("samba_users") or {}).items()):
                if password:
                    found[f"samba_users.{user}"] = str(password)
        if get("syncthing_enabled", True) and get("syncthing_gui_password"):
            found["syncthing_gui_password"] = str(get("syncthing_gui_password"))
    # homecloud/layers/services.py: Nextcloud's secrets, in the manifest on every k3s server.
    if "k3s_servers" in groups and get("nextcloud_enabled"):
        for key in ("nextcloud_admin_password", "nextcloud_db_password", "nextcloud_db_root_password", "nextcloud_redis_password"):
            if get(key):
                found[key] = str(get(key))
    if get("backup_enabled", False) and get("backup_passphrase"):
        found["backup_passphrase"] = str(get("backup_passphrase"))
    return found


def describe(location: str) -> str:
    if location == "keepalived_auth_pass":
        return "the keepalived (VRRP) password"
    if location.startswith("samba_users."):
        return f"the Samba password of {location.split('.', 1)[1]}"
    if location == "syncthing_gui_password":
        return "the Syncthing GUI password"
    if location == "k3s_token":
        return "the k3s join token"
    if location == "backup_passphrase":
        return "the backup repositories' passphrase"
    return location


def clients_to_update(location: str, hosts: list[str]) -> str:
    """The line a rotation prints: what changes where, and which clients must follow."""
    where = ", ".join(sorted(hosts))
    if location.startswith("samba_users."):
        user = location.split(".", 1)[1]
        return f"Samba password of {user} changed on {where}: update {user}'s devices (saved share passwords on phones, laptops, TVs)"
    if location == "syncthing_gui_password":
        return f"Syncthing GUI password changed on {where}: update the password saved in your browsers"
    if location == "keepalived_auth_pass":
        return f"keepalived (VRRP) password changed on {where}, every peer in this run: no client outside the cluster uses it"
    return f"{describe(location)} changed on {where}"


@dataclass
class Decision:
    problems: list[str] = field(default_factory=list)
    rotations: dict[str, list[str]] = field(default_factory=dict)  # location -> hosts changing
    salts: dict[str, str] = field(default_factory=dict)  # host -> salt its file uses
    finished: set[tuple[str, str]] = field(default_factory=set)  # (store, name) rotations complete
    generated: set[tuple[str, str]] = field(default_factory=set)  # (store, name) generated, refused


def evaluate(
    hosts: dict[str, dict[str, str]],
    facts: dict[str, dict],
    origins: Callable[[str], set],
    pending: Callable[[str, str], bool],
    new_salt: str,
    all_hosts_in_run: bool = True,
    keepalived_members_missing: list[str] | None = None,
) -> Decision:
    """
    The decision of `check_secrets`, from plain data:

    + hosts: host name -> {location: value} this controller would give it (`node_secrets`)
    + facts: host name -> its ``secrets.SecretFingerprints`` fact
    + origins: value -> set of `homecloud.secrets.Origin` (store, name, source)
    + pending: (store, name) -> whether it is marked for rotation
    + new_salt: the salt for nodes that have none yet (a node's own salt is kept)
    + all_hosts_in_run: False when --limit leaves hosts out (a rotation is then not finished)
    + keepalived_members_missing: keepalived peers left out of this run
    """
    decision = Decision()
    cluster_salt = next((f["salt"] for f in facts.values() if f.get("salt")), None) or new_salt
    rotating: dict[tuple[str, str], bool] = {}  # (store, name) -> every node matches already
    for host_name, secrets in sorted(hosts.items()):
        fact = facts.get(host_name) or {}
        salt = fact.get("salt") or cluster_salt
        decision.salts[host_name] = salt
        recorded = fact.get("fingerprints") or {}
        present = set(fact.get("present") or [])
        for location, value in sorted(secrets.items()):
            sources = origins(value)
            marked = sorted((o.store, o.name) for o in sources if pending(o.store, o.name))
            generated = sorted((o.store, o.name) for o in sources if o.source == "generated")
            names = ", ".join(sorted({o.name for o in sources})) or location
            if location in recorded:
                if hmac.compare_digest(recorded[location], fingerprint(salt, location, value)):
                    for key in marked:
                        rotating.setdefault(key, True)
                    continue
                if marked and location != "k3s_token":
                    decision.rotations.setdefault(location, []).append(host_name)
                    for key in marked:
                        rotating[key] = False
                    continue
                if marked:
                    decision.problems.append(
                        f"{host_name}: {location}: the k3s token cannot be rotated by a deploy (servers and agents would "
                        "lose the cluster). Fix: rotate it with `k3s token rotate` on a server, put the new token in the "
                        "store, and clear the mark by importing the store again"
                    )
                    continue
                why = "this controller has another value than the one the node was given"
                if generated:
                    why = "this controller generated a new value just now (its store had none)"
                decision.problems.append(f"{host_name}: {describe(location)} ({names}): {why}")
                decision.generated.update(generated)
            elif generated and location in present:
                decision.problems.append(
                    f"{host_name}: {describe(location)} ({names}): this controller generated a new value just now "
                    "(its store had none), but the node already has one"
                )
                decision.generated.update(generated)
    if keepalived_members_missing and "keepalived_auth_pass" in decision.rotations:
        decision.problems.append(
            f"keepalived_auth_pass: its rotation must reach every keepalived peer in one run (peers with different "
            f"passwords each take the VIP), but {', '.join(keepalived_members_missing)} are not in this run. Fix: run "
            "without --limit/--exclude"
        )
    if all_hosts_in_run:
        decision.finished = {key for key, done in rotating.items() if done}
    return decision


def format_problems(decision: Decision) -> str:
    lines = [
        "homecloud: this controller does not hold the cluster's secrets; nothing was changed on any host "
        "(a deploy would have set new passwords on the boards):",
        *(f"  - {p}" for p in decision.problems),
        "Fix: copy the secret store from the controller that deployed this cluster: there run "
        "`python -m homecloud.secrets export FILE`, here `python -m homecloud.secrets import FILE`. "
        "Or, to change a secret on purpose, `python -m homecloud.secrets rotate NAME` and run again.",
    ]
    if decision.generated:
        stores = sorted({s for s, _ in decision.generated})
        lines.append(
            f"(The values generated just now are in {', '.join(stores)}; an import replaces them and keeps a .bak copy.)"
        )
    return "\n".join(lines)


# --- The check at the top of every deploy --------------------------------------------------------


def _read_facts(state, hosts) -> dict[str, dict]:
    """One SecretFingerprints read per host, in parallel, with fact output off (salt and
    fingerprints are not to be printed by -vvv)."""
    import gevent
    from pyinfra.context import ctx_host, ctx_state

    from facts.secrets import SecretFingerprints
    from operations.system import secret_fact

    real_state = hosts[0].state

    def read(target):
        with ctx_state.use(real_state), ctx_host.use(target):
            return secret_fact(target, SecretFingerprints, _sudo=bool(target.data.get("_sudo")))

    greenlets = {target.name: gevent.spawn(read, target) for target in hosts}
    gevent.joinall(list(greenlets.values()))
    return {name: (greenlet.get() or {}) for name, greenlet in greenlets.items()}


def check_secrets(state) -> Decision:
    """Run once per pyinfra state (deploy files are loaded per host, concurrently): stop the run
    before any change when this controller would rotate the cluster's secrets silently."""
    from gevent.event import Event
    from pyinfra import logger

    from .run import this_run

    run = this_run(state)
    shared = run.secrets_check
    if shared is None:
        shared = run.secrets_check = {"done": Event(), "decision": None, "error": None}
        try:
            shared["decision"] = _check(state, logger)
        except InventoryError as e:
            shared["error"] = str(e)
        finally:
            shared["done"].set()
    shared["done"].wait()
    if shared["error"]:
        raise InventoryError(shared["error"])
    return shared["decision"]


def _check(state, logger) -> Decision:
    hosts = list(state.inventory.get_active_hosts())
    if not hosts:
        return Decision()
    wanted = {h.name: node_secrets(h.data, [g for g in h.groups if g != "all"]) for h in hosts}
    facts = _read_facts(state, [h for h in hosts if wanted[h.name]]) if any(wanted.values()) else {}
    active = {h.name for h in hosts}
    everyone = [h for h in state.inventory]
    members = [
        h.name for h in everyone
        if h.data.get("keepalived_enabled", True) and h.data.get("keepalived_group", "k3s_servers") in h.groups
    ]
    decision = evaluate(
        wanted,
        facts,
        store.origins,
        store.rotation_pending,
        _random.token_hex(16),
        all_hosts_in_run=len(active) == len(everyone),
        keepalived_members_missing=[m for m in members if m not in active],
    )
    if decision.problems:
        raise InventoryError(format_problems(decision))
    for location, changing in sorted(decision.rotations.items()):
        logger.warning(f"homecloud: rotation on purpose: {clients_to_update(location, changing)}")
    for store_path, name in sorted(decision.finished):
        store.finish_rotation(store_path, name)
        logger.info(f"homecloud: rotation of {name} is complete on every node: its mark is cleared ({store_path})")
    return decision


def salt_for(state, host) -> str:
    """The salt of `host`'s fingerprint file (its own, or the cluster's for a new node)."""
    decision = check_secrets(state)
    return decision.salts.get(host.name) or next(iter(decision.salts.values()), None) or _random.token_hex(16)
