"""
Merging the cluster's kubeconfig into the user's (~/.kube/config) on the controller.

k3s writes /etc/rancher/k3s/k3s.yaml on each server with a cluster, a user and a context all
named "default" and the server URL https://127.0.0.1:6443. `merge()` renames the three to the
homecloud context name, points the server at the VIP, and puts them into the existing
kubeconfig next to whatever else is there (other clusters are kept as they are). It is a pure
function: text in, text out; the operation writes the result only when it differs.
"""

from __future__ import annotations

from typing import Any

import yaml


class KubeconfigError(ValueError):
    pass


def _load(text: str | None, what: str) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KubeconfigError(f"{what} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KubeconfigError(f"{what} is not a kubeconfig (a mapping is expected)")
    return data


def _upsert(items: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    out = [item for item in items if isinstance(item, dict) and item.get("name") != entry["name"]]
    out.append(entry)
    return sorted(out, key=lambda item: str(item.get("name")))


def merge(existing: str | None, cluster_kubeconfig: str, context: str, server_url: str) -> str:
    """
    The kubeconfig text `existing` with the (single) cluster, user and context of
    `cluster_kubeconfig` added as `context` (cluster, user and context share that name),
    the cluster's server set to `server_url`. current-context is set only when unset.
    """
    new = _load(cluster_kubeconfig, "the cluster kubeconfig")
    clusters = new.get("clusters") or []
    users = new.get("users") or []
    if len(clusters) != 1 or len(users) != 1:
        raise KubeconfigError("the cluster kubeconfig must hold exactly one cluster and one user (k3s.yaml does)")
    cluster = dict(clusters[0].get("cluster") or {})
    if not cluster.get("certificate-authority-data") and not cluster.get("certificate-authority"):
        raise KubeconfigError("the cluster kubeconfig has no certificate authority")
    cluster["server"] = server_url
    user = dict(users[0].get("user") or {})

    merged = _load(existing, "the existing kubeconfig")
    merged.setdefault("apiVersion", "v1")
    merged.setdefault("kind", "Config")
    merged.setdefault("preferences", {})
    merged["clusters"] = _upsert(list(merged.get("clusters") or []), {"name": context, "cluster": cluster})
    merged["users"] = _upsert(list(merged.get("users") or []), {"name": context, "user": user})
    merged["contexts"] = _upsert(
        list(merged.get("contexts") or []),
        {"name": context, "context": {"cluster": context, "user": context}},
    )
    if not merged.get("current-context"):
        merged["current-context"] = context
    return yaml.safe_dump(merged, default_flow_style=False, sort_keys=True)


def server_url(vip: str, port: int = 6443) -> str:
    host = f"[{vip}]" if ":" in vip else vip
    return f"https://{host}:{port}"


def unmerge(existing: str | None, context: str) -> str | None:
    """`existing` without the cluster, user and context named `context` (None if empty)."""
    data = _load(existing, "the existing kubeconfig")
    if not data:
        return None
    if not any(
        isinstance(item, dict) and item.get("name") == context
        for key in ("clusters", "users", "contexts")
        for item in (data.get(key) or [])
    ) and data.get("current-context") != context:
        return existing
    for key in ("clusters", "users", "contexts"):
        data[key] = [item for item in (data.get(key) or []) if not (isinstance(item, dict) and item.get("name") == context)]
    if data.get("current-context") == context:
        data["current-context"] = ""
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True)
