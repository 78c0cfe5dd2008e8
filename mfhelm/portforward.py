"""`mfhelm port-forward`: the stack's web endpoints on localhost.

One `kubectl port-forward` per Service that exists; Ctrl-C stops them all.
Argo Events' webhook lives in the flow namespace: it is found through the
release's published Metaflow config, which names it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mfhelm.errors import Interrupted, MfhelmError


@dataclass(frozen=True)
class Forward:
    label: str
    service: str
    local: int
    remote: int
    url: str
    namespace: str = ""  # empty: the release namespace


def plan(release: str, present: set[str], airflow_signin: bool = False) -> list[Forward]:
    """Forwards for the Services present, in a fixed order. The local ports
    are the ones the UI and the Metaflow config expect. Behind the sign-in
    (`airflow_signin`), Airflow answers only under /airflow/, and over
    port-forward only its own admin password works (break-glass)."""
    airflow = ("http://localhost:8081/airflow/ (break-glass: log in as the admin of the "
               "metaflow-airflow-admin Secret)" if airflow_signin else "http://localhost:8081")
    wanted = [
        Forward("metadata service", f"{release}-metadata", 8080, 8080, "http://localhost:8080"),
        Forward("UI backend", f"{release}-ui-backend", 8083, 8083, "http://localhost:8083/api"),
        Forward("Metaflow UI", f"{release}-ui", 3000, 3000, "http://localhost:3000"),
        # argo-helm runs the server with --secure=false and --auth-mode=client:
        # its login page takes "Bearer <your Kubernetes token>".
        Forward("Argo Workflows", f"{release}-argo-workflows-server", 2746, 2746,
                "http://localhost:2746 (log in with: Bearer <your Kubernetes token>)"),
        Forward("Airflow", f"{release}-webserver", 8081, 8080, airflow),
        # The local profile's Blob and token endpoints, as `mfhelm config --local`
        # names them (HTTPS under the local CA).
        Forward("Azurite (Blob)", f"{release}-azurite", 10000, 10000,
                "https://localhost:10000/devstoreaccount1/"),
        Forward("Entra emulator", f"{release}-entra-emulator", 8443, 8443,
                "https://localhost:8443 (tokens for Azurite)"),
    ]
    found = [f for f in wanted if f.service in present]
    # Argo Events' webhook (`<release>-webhook` event source), which
    # METAFLOW_ARGO_EVENTS_WEBHOOK_URL names on localhost:12000.
    webhook = f"{release}-webhook-eventsource-svc"
    for entry in sorted(present):
        ns, _, name = entry.rpartition("/")
        if name == webhook:
            found.append(Forward("Argo Events webhook", webhook, 12000, 12000,
                                 "http://localhost:12000/metaflow-event", ns))
            break
    return found


def services(api: Any, namespace: str) -> set[str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from mfhelm import kube

    core: Any = client.CoreV1Api(api)
    try:
        names = {s.metadata.name for s in core.list_namespaced_service(namespace).items}
    except ApiException as exc:
        raise kube.api_error(exc, f"listing Services in {namespace}") from None
    return names | webhook_services(core, namespace)


def airflow_behind_signin(api: Any, namespace: str) -> bool:
    """Whether the chart rendered Airflow's sign-in webserver_config (access
    and Airflow on): then Airflow serves under /airflow."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from mfhelm.values import AIRFLOW_SIGNIN_CONFIG

    try:
        client.CoreV1Api(api).read_namespaced_config_map(AIRFLOW_SIGNIN_CONFIG, namespace)
    except ApiException:
        return False
    return True


def webhook_services(core: Any, namespace: str) -> set[str]:
    """`<namespace>/<name>` of the Argo Events webhook Services that the
    Metaflow configs published in `namespace` name (their internal webhook
    URL, http://<service>.<flow namespace>.svc...), where they exist and can
    be read. Before the controller makes the Service, there is none."""
    from kubernetes.client.exceptions import ApiException

    try:
        maps = core.list_namespaced_config_map(
            namespace, label_selector="app.kubernetes.io/component=config").items
    except ApiException:
        return set()
    out = set()
    for cm in maps:
        try:
            config = json.loads((cm.data or {}).get("config.json") or "{}")
        except ValueError:
            continue
        host = urlsplit(str(config.get("METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL", ""))).hostname
        parts = (host or "").split(".")
        if len(parts) < 3 or parts[2] != "svc":
            continue
        try:
            core.read_namespaced_service(parts[0], parts[1])
        except ApiException:
            continue
        out.add(f"{parts[1]}/{parts[0]}")
    return out


def run(forwards: list[Forward], namespace: str, *, kubeconfig: str | None,
        context: str | None, echo: Any = print) -> int:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise MfhelmError("kubectl not found on PATH; it carries the port-forward connections")
    if not forwards:
        raise MfhelmError(f"no mfhelm Services found in namespace {namespace!r}; is it installed?")
    base = [kubectl]
    if kubeconfig:
        base += ["--kubeconfig", kubeconfig]
    if context:
        base += ["--context", context]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for f in forwards:
            try:
                procs.append(subprocess.Popen(
                    [*base, "-n", f.namespace or namespace, "port-forward", f"svc/{f.service}",
                     f"{f.local}:{f.remote}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                ))
            except OSError as exc:
                raise MfhelmError(f"cannot run {kubectl}: {exc.strerror or exc}") from None
            echo(f"{f.label:<18} {f.url}")
        echo("forwarding; Ctrl-C stops")
        while True:
            for proc, f in zip(procs, forwards, strict=True):
                if proc.poll() is not None:
                    err = (proc.stderr.read() if proc.stderr else b"").decode(
                        errors="replace").strip()
                    why = err.splitlines()[-1] if err else f"exit {proc.returncode}"
                    raise MfhelmError(f"port-forward to {f.service} stopped: {why}")
            time.sleep(0.5)
    except (KeyboardInterrupt, Interrupted):
        echo("stopped")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        sys.stdout.flush()
