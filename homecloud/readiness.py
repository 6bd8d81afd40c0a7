"""
Cluster readiness, checked from the controller through the merged kubeconfig with the
`kubernetes` Python client: every node Ready and every kube-system Deployment available,
within a bounded time. deploys/k3s.py runs it at the end as a python.call operation.

`wait_ready()` takes an API factory so tests can hand it a fake API object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


class ClusterNotReady(RuntimeError):
    pass


@dataclass
class Readiness:
    nodes_not_ready: list[str] = field(default_factory=list)
    nodes_missing: list[str] = field(default_factory=list)
    deployments_not_available: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.nodes_not_ready or self.nodes_missing or self.deployments_not_available or self.error)

    def describe(self) -> str:
        parts = []
        if self.error:
            parts.append(f"API not answering: {self.error}")
        if self.nodes_missing:
            parts.append("nodes not registered: " + ", ".join(self.nodes_missing))
        if self.nodes_not_ready:
            parts.append("nodes not Ready: " + ", ".join(self.nodes_not_ready))
        if self.deployments_not_available:
            parts.append("kube-system deployments not available: " + ", ".join(self.deployments_not_available))
        return "; ".join(parts) or "ready"


def _node_ready(node: Any) -> bool:
    for condition in (node.status.conditions or []) if node.status else []:
        if condition.type == "Ready":
            return condition.status == "True"
    return False


def _deployment_available(deployment: Any) -> bool:
    wanted = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    if wanted == 0:
        return True
    status = deployment.status
    for condition in (status.conditions or []) if status else []:
        if condition.type == "Available" and condition.status != "True":
            return False
    return bool(status) and (status.available_replicas or 0) >= wanted


def check(core: Any, apps: Any, expected_nodes: Iterable[str] = ()) -> Readiness:
    """One look at the cluster: `core` is a CoreV1Api, `apps` an AppsV1Api (or fakes)."""
    result = Readiness()
    try:
        nodes = core.list_node().items
        deployments = apps.list_namespaced_deployment("kube-system").items
    except Exception as e:  # connection refused, TLS, 401 ... all mean "not ready yet"
        result.error = f"{type(e).__name__}: {e}"[:300]
        return result
    names = {n.metadata.name for n in nodes}
    result.nodes_missing = sorted(set(expected_nodes) - names)
    result.nodes_not_ready = sorted(n.metadata.name for n in nodes if not _node_ready(n))
    result.deployments_not_available = sorted(d.metadata.name for d in deployments if not _deployment_available(d))
    if not deployments and not result.error:
        result.deployments_not_available = ["(none yet: the packaged components are not deployed)"]
    return result


def kubernetes_apis(kubeconfig: str, context: str) -> tuple[Any, Any]:
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
    return client.CoreV1Api(api_client), client.AppsV1Api(api_client)


def wait_ready(
    expected_nodes: Iterable[str],
    timeout: float,
    apis: Callable[[], tuple[Any, Any]],
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Readiness:
    """Poll until ready; raise ClusterNotReady with what is still missing after `timeout` s."""
    expected = list(expected_nodes)
    deadline = clock() + timeout
    last = Readiness(error="not checked yet")
    core = apps = None
    while True:
        try:
            if core is None:
                core, apps = apis()
            last = check(core, apps, expected)
        except Exception as e:
            last = Readiness(error=f"{type(e).__name__}: {e}"[:300])
            core = apps = None
        if last.ok:
            return last
        if clock() >= deadline:
            raise ClusterNotReady(f"the cluster is not ready after {int(timeout)} s (k3s_ready_timeout): {last.describe()}")
        sleep(min(interval, max(0.0, deadline - clock())))


def python_call_wait_ready(kubeconfig: str, context: str, expected_nodes: list[str], timeout: float) -> None:
    """For `python.call`: raise on timeout so pyinfra reports the operation as failed."""
    import os

    path = os.path.expanduser(kubeconfig)
    wait_ready(expected_nodes, timeout, apis=lambda: kubernetes_apis(path, context))


# --- The platform's add-ons (homecloud/layers/platform.py) -------------------------------------

# What "installed" means per add-on: the helm controller's install Job of its HelmChart
# (helm-install-<chart>, in the HelmChart's namespace: kube-system for both; Traefik's HelmChart
# is k3s's own, tuned by our HelmChartConfig), and the workloads that must be rolled out: named
# ones, or every Deployment and DaemonSet of a namespace.
PLATFORM_EXPECT: dict[str, dict[str, Any]] = {
    "traefik": {"jobs": [("kube-system", "helm-install-traefik")], "workloads": [("kube-system", "Deployment", "traefik")], "namespaces": []},
    "longhorn": {"jobs": [("kube-system", "helm-install-longhorn")], "workloads": [], "namespaces": ["longhorn-system"]},
    # Prometheus and Alertmanager are StatefulSets the operator makes; the operator, Grafana,
    # kube-state-metrics (Deployments) and node-exporter (DaemonSet) are checked.
    "monitoring": {"jobs": [("kube-system", "helm-install-kube-prometheus-stack")], "workloads": [], "namespaces": ["monitoring"]},
    "dashboard": {"jobs": [("kube-system", "helm-install-kubernetes-dashboard")], "workloads": [], "namespaces": ["kubernetes-dashboard"]},
    "portainer": {"jobs": [("kube-system", "helm-install-portainer")], "workloads": [], "namespaces": ["portainer"]},
    # The services layer's Nextcloud (kubernetes/services/nextcloud/, no HelmChart, no install job):
    # its Deployments by name (tests/test_services_deploy.py checks these are the module's workloads).
    "nextcloud": {
        "jobs": [],
        "workloads": [("nextcloud", "Deployment", "mariadb"), ("nextcloud", "Deployment", "redis"), ("nextcloud", "Deployment", "nextcloud")],
        "namespaces": [],
    },
}


@dataclass
class PlatformReadiness:
    jobs_pending: list[str] = field(default_factory=list)
    jobs_failed: list[str] = field(default_factory=list)
    workloads_not_ready: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.jobs_pending or self.jobs_failed or self.workloads_not_ready or self.error)

    def describe(self) -> str:
        parts = []
        if self.error:
            parts.append(f"API not answering: {self.error}")
        if self.jobs_failed:
            parts.append("install jobs failing (kubectl -n kube-system logs job/<name>): " + ", ".join(self.jobs_failed))
        if self.jobs_pending:
            parts.append("install jobs not done: " + ", ".join(self.jobs_pending))
        if self.workloads_not_ready:
            parts.append("not rolled out: " + ", ".join(self.workloads_not_ready))
        return "; ".join(parts) or "ready"


def _job_state(job: Any) -> str:
    status = job.status
    for condition in (status.conditions or []) if status else []:
        if condition.type == "Complete" and condition.status == "True":
            return "done"
        if condition.type == "Failed" and condition.status == "True":
            return "failed"
    if status and (status.succeeded or 0) >= 1:
        return "done"
    if status and (status.failed or 0) >= 3:
        return "failed"
    return "pending"


def _daemonset_rolled_out(ds: Any) -> bool:
    status = ds.status
    if not status:
        return False
    wanted = status.desired_number_scheduled or 0
    if ds.metadata.generation is not None and (status.observed_generation or 0) < ds.metadata.generation:
        return False
    return (status.updated_number_scheduled or 0) >= wanted and (status.number_available or 0) >= wanted


def _deployment_rolled_out(deployment: Any) -> bool:
    status = deployment.status
    generation = deployment.metadata.generation
    if status and generation is not None and (status.observed_generation or 0) < generation:
        return False
    wanted = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    if status and wanted and (status.updated_replicas or 0) < wanted:
        return False
    return _deployment_available(deployment)


def _read(call: Callable, *args: Any) -> Any:
    """The object, or None when the API says 404 (not created yet)."""
    try:
        return call(*args)
    except Exception as e:
        if getattr(e, "status", None) == 404:
            return None
        raise


def check_platform(batch: Any, apps: Any, addons: Iterable[str]) -> PlatformReadiness:
    """One look: `batch` a BatchV1Api, `apps` an AppsV1Api (or fakes)."""
    result = PlatformReadiness()
    try:
        for addon in addons:
            expect = PLATFORM_EXPECT[addon]
            for namespace, job_name in expect["jobs"]:
                job = _read(batch.read_namespaced_job, job_name, namespace)
                state = "pending" if job is None else _job_state(job)
                if state == "failed":
                    result.jobs_failed.append(f"{namespace}/{job_name}")
                elif state == "pending":
                    result.jobs_pending.append(f"{namespace}/{job_name}" + (" (not created yet)" if job is None else ""))
            for namespace, kind, workload in expect["workloads"]:
                read = apps.read_namespaced_deployment if kind == "Deployment" else apps.read_namespaced_daemon_set
                obj = _read(read, workload, namespace)
                done = obj is not None and (_deployment_rolled_out(obj) if kind == "Deployment" else _daemonset_rolled_out(obj))
                if not done:
                    result.workloads_not_ready.append(f"{kind} {namespace}/{workload}" + (" (not created yet)" if obj is None else ""))
            for namespace in expect["namespaces"]:
                deployments = apps.list_namespaced_deployment(namespace).items
                daemonsets = apps.list_namespaced_daemon_set(namespace).items
                if not deployments and not daemonsets:
                    result.workloads_not_ready.append(f"{namespace} (no workloads yet)")
                result.workloads_not_ready += [f"Deployment {namespace}/{d.metadata.name}" for d in deployments if not _deployment_rolled_out(d)]
                result.workloads_not_ready += [f"DaemonSet {namespace}/{d.metadata.name}" for d in daemonsets if not _daemonset_rolled_out(d)]
    except Exception as e:  # connection refused, TLS, 401 ... all mean "not ready yet"
        return PlatformReadiness(error=f"{type(e).__name__}: {e}"[:300])
    return result


def platform_apis(kubeconfig: str, context: str) -> tuple[Any, Any]:
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
    return client.BatchV1Api(api_client), client.AppsV1Api(api_client)


def wait_platform(
    addons: Iterable[str],
    timeout: float,
    apis: Callable[[], tuple[Any, Any]],
    interval: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PlatformReadiness:
    """Poll until every add-on is installed and rolled out; ClusterNotReady naming what is not, after `timeout` s."""
    addons = list(addons)
    unknown = [a for a in addons if a not in PLATFORM_EXPECT]
    if unknown:
        raise ValueError(f"no readiness rule for add-on(s) {', '.join(unknown)}: add them to PLATFORM_EXPECT")
    deadline = clock() + timeout
    batch = apps = None
    while True:
        try:
            if batch is None:
                batch, apps = apis()
            last = check_platform(batch, apps, addons)
        except Exception as e:
            last = PlatformReadiness(error=f"{type(e).__name__}: {e}"[:300])
            batch = apps = None
        if last.ok:
            return last
        if clock() >= deadline:
            raise ClusterNotReady(f"the add-ons ({', '.join(addons)}) are not ready after {int(timeout)} s (platform_ready_timeout): {last.describe()}")
        sleep(min(interval, max(0.0, deadline - clock())))


def python_call_wait_platform(kubeconfig: str, context: str, addons: list[str], timeout: float) -> None:
    """For `python.call`: raise on timeout so pyinfra reports the operation as failed."""
    import os

    path = os.path.expanduser(kubeconfig)
    wait_platform(addons, timeout, apis=lambda: platform_apis(path, context))
