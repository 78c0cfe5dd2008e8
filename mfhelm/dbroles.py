"""Per-application database roles on the azure profile.

The Flexible Server's admin password leaves Key Vault only for the db-bootstrap
Job (the chart's templates/db-bootstrap.yaml, running files/db_roles.sql with
psql): it creates a Metaflow role and an Airflow role, each owning only its
own database's objects. The Job, its ConfigMap and the Secret holding the
admin's password are deleted as soon as it ends, whatever the outcome, so no
workload can read the admin password afterwards. The server is private to
the VNet, so the Job runs in the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mfhelm.errors import MfhelmError

TEMPLATE = "templates/db-bootstrap.yaml"


def render(chart: Path, values: dict[str, Any], release: str, namespace: str,
           helm_bin: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bootstrap ConfigMap and Job, rendered by the chart itself."""
    from mfhelm import proc as children

    proc = children.run(
        [helm_bin, "template", release, str(chart), "--namespace", namespace, "-f", "-",
         "--set", "database.bootstrap.render=true", "--show-only", TEMPLATE],
        input=yaml.safe_dump(values), timeout=children.QUICK_TIMEOUT,
        what="rendering the db-bootstrap Job (helm template)",
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise MfhelmError("the chart refused the db-bootstrap values: "
                          + (lines[-1].removeprefix("Error: ") if lines else "no output"))
    objs = {d["kind"]: d for d in yaml.safe_load_all(proc.stdout) if d}
    return objs["ConfigMap"], objs["Job"]


def secret_name(job: dict[str, Any]) -> str:
    """The Secret the Job reads the admin password from (named by the chart)."""
    for env in job["spec"]["template"]["spec"]["containers"][0]["env"]:
        if env["name"] == "PGPASSWORD":
            return str(env["valueFrom"]["secretKeyRef"]["name"])
    raise MfhelmError("the chart's db-bootstrap Job reads no PGPASSWORD")


def run(api: Any, namespace: str, configmap: dict[str, Any], job: dict[str, Any],
        secret_data: dict[str, str], *, timeout: float = 300,
        progress: Callable[[str], None] = lambda _: None) -> None:
    """Create the Secret, ConfigMap and Job; wait for the Job; always delete
    all three. A failed Job becomes one error line with psql's last words."""
    from kubernetes import client

    from mfhelm import kube

    core: Any = client.CoreV1Api(api)
    batch: Any = client.BatchV1Api(api)
    name = job["metadata"]["name"]
    secret = secret_name(job)
    try:
        _delete(batch.delete_namespaced_job, name, namespace)  # a leftover run
        kube.apply_secret(api, namespace, secret, secret_data)
        _replace_or_create(core, namespace, configmap)
        batch.create_namespaced_job(namespace, job)
        progress("waiting for the db-bootstrap Job (database roles)")
        outcome = _wait(batch, namespace, name, timeout)
        if outcome != "Complete":
            raise MfhelmError(f"the db-bootstrap Job {outcome.lower()}: "
                              f"{_last_log_line(core, namespace, name)}")
    except client.ApiException as exc:
        raise MfhelmError(f"db-bootstrap in {namespace}: {exc.status} {exc.reason}") from None
    finally:
        _delete(batch.delete_namespaced_job, name, namespace, propagation_policy="Foreground")
        _delete(core.delete_namespaced_secret, secret, namespace)
        _delete(core.delete_namespaced_config_map, configmap["metadata"]["name"], namespace)


def _wait(batch: Any, namespace: str, name: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = batch.read_namespaced_job(name, namespace).status
        for cond in (status and status.conditions) or []:
            if cond.status == "True" and cond.type in ("Complete", "Failed"):
                return str(cond.type)
        time.sleep(1)
    return f"did not finish in {timeout:.0f}s"


def _last_log_line(core: Any, namespace: str, job: str) -> str:
    from kubernetes.client.exceptions import ApiException

    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp, reverse=True):
            text = core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=5)
            lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
            if lines:
                return lines[-1]
    except ApiException:
        pass
    return f"see `kubectl -n {namespace} describe job {job}` while it runs"


def _replace_or_create(core: Any, namespace: str, configmap: dict[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        core.create_namespaced_config_map(namespace, configmap)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(configmap["metadata"]["name"], namespace, configmap)


def _delete(fn: Callable[..., Any], name: str, namespace: str, **kw: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        fn(name, namespace, **kw)
    except ApiException as exc:
        if exc.status != 404:
            raise
