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
