"""Argo Workflows' server (`argo server`) against the test cluster, set up
the way argo-helm 1.0.18 sets it up for our values.

The binary is the `argo` CLI built from the same module version as the
workflow controller (tools.toml [gobuild.argo]). It runs on this host as the
ServiceAccount argo-helm creates for the server, with exactly the Roles our
chart renders for it (its kubeconfig carries a TokenRequest token of that
account), so anything the server did with its own account would be judged
by those Roles.

What differs from argo-helm's pod, and why:
- the API server is reached through a kubeconfig named by KUBECONFIG
  instead of the in-cluster config. In `client` mode the server builds each
  caller's client from the same loading rules with the caller's token in
  place of its own (v4.0.7 util/kubeconfig: restConfigWithoutAuth keeps the
  host and CA, drops every credential), so KUBECONFIG plays the pod's
  in-cluster config for both;
- it listens on a free port instead of 2746;
- the module build has no UI: the CLI embeds ui/dist/app (v4.0.7
  ui/embed.go), which a release build fills with the built UI and this
  build holds only the empty index.html argo's Makefile makes for a build
  without it (tools.toml [gobuild.argo] empty_files), so `/` answers an
  empty page; every API route is the same.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import argo
from .controlplane import ROOT, Processes, ensure_tool, free_port
from .handle import Cluster

# argo-helm 1.0.18 templates/server/server-deployment.yaml: logging defaults.
LOG_ARGS = ["--loglevel", "info", "--gloglevel", "0", "--log-format", "text"]
# v4.0.7 server/apiserver/argoserver.go, once it listens (the URL is a field
# of its own now; v3.6 wrote "... successfully on <url>").
STARTED = "Argo Server started successfully"


def server_name(release: str) -> str:
    """The server's Deployment and ServiceAccount name (argo-helm
    `argo-workflows.server.fullname`)."""
    return f"{argo.fullname(release)}-server"[:63].rstrip("-")


def ensure_cli() -> tuple[Path, str]:
    """The pinned `argo` CLI (its `server` command) and its version."""
    home, entry = ensure_tool(argo.TOOL, "the Argo server tests (the `argo` CLI)")
    return home / "bin" / "argo", entry["version"]


def server_values(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our values.yaml's `argo-workflows.server` over argo-helm's defaults of
    the keys the server Deployment reads, with ``extra`` (what `mfhelm
    install` adds) over both."""
    values = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())
    ours = values["argo-workflows"]
    server = {"authMode": "", "authModes": [], "secure": False, "baseHref": "/",
              "extraArgs": [], **ours["server"], **(extra or {})}
    return {"singleNamespace": ours["singleNamespace"], "server": server}


def server_args(release: str, values: dict[str, Any]) -> list[str]:
    """The container args argo-helm 1.0.18 renders for the server."""
    server = values["server"]
    args = ["server", f"--configmap={argo.configmap_name(release)}", *server["extraArgs"]]
    if server["authMode"]:
        args.append(f"--auth-mode={server['authMode']}")
    args += [f"--auth-mode={m}" for m in server["authModes"]]
    args.append(f"--secure={str(server['secure']).lower()}")
    if values["singleNamespace"]:
        args.append("--namespaced")
    return [*args, *LOG_ARGS]


@dataclass
class ArgoServer:
    """An Argo server running on this host for one release."""

    release: str
    namespace: str
    url: str  # http://127.0.0.1:<port>, serving at / as in the pod
    argv: list[str]
    log: Path
    _procs: Processes = field(repr=False)
    _name: str = field(repr=False)

    @property
    def service_account(self) -> str:
        return server_name(self.release)

    def log_text(self) -> str:
        """This run's log (the file also holds earlier runs of the release)."""
        return self._procs.text(self._name)

    def tail(self, lines: int = 40) -> str:
        return self._procs.tail(self._name, lines)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 503


@contextmanager
def run_server(cluster: Cluster, binary: Path, release_namespace: str,
               flow_namespace: str, *, release: str = "metaflow",
               base_href: str = "/", timeout: float = 90) -> Iterator[ArgoServer]:
    """Set up and run the server of ``release`` (installed in
    ``release_namespace``, flows in ``flow_namespace``); stopped on exit.

    Creates what argo-helm and our chart give it without Helm: the
    controller's ConfigMap it reads at start, its ServiceAccount, and our
    chart's Argo Roles. ``base_href`` is `argo-workflows.server.baseHref`.
    """
    argo.prepare_release(cluster, release, release_namespace, flow_namespace, free_port())
    account = server_name(release)
    argo.apply(cluster, {"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": account, "namespace": release_namespace}})
    workdir = cluster.workdir / "argo-server" / f"{release_namespace}-{release}"
    kubeconfig = argo.token_kubeconfig(
        cluster, workdir / "kubeconfig",
        argo.service_account_token(cluster, release_namespace, account),
        release_namespace, f"system:serviceaccount:{release_namespace}:{account}")
    extra = argo.chart_values(release_namespace, flow_namespace).get("argo-workflows", {})
    values = server_values({"extraArgs": extra.get("server", {}).get("extraArgs", []),
                            "baseHref": base_href})
    port = free_port()
    argv = [str(binary), *server_args(release, values), f"--port={port}"]
    # As in argo-helm's pod: IN_CLUSTER, ARGO_NAMESPACE and ARGO_BASE_HREF
    # (read through the CLI's ARGO_* flag binding); nothing else inherited
    # that the binary reads.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ARGO_") and k != "KUBECONFIG"}
    env.update(IN_CLUSTER="true", ARGO_NAMESPACE=release_namespace,
               ARGO_BASE_HREF=values["server"]["baseHref"], KUBECONFIG=str(kubeconfig))
    logdir = cluster.workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    name = f"argo-server-{release_namespace}-{release}"
    procs = Processes(logdir)
    server = ArgoServer(release=release, namespace=release_namespace,
                        url=f"http://127.0.0.1:{port}", argv=argv,
                        log=logdir / f"{name}.log", _procs=procs, _name=name)
    procs.start(name, argv, env=env)
    try:
        deadline = time.monotonic() + timeout
        while STARTED not in server.log_text():
            procs.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"argo server for {release_namespace} not started after "
                                   f"{timeout:.0f}s:\n{server.tail()}")
            time.sleep(0.2)
        # Its REST gateway dials the server's own gRPC port, one connection
        # per API service, before it listens (v4.0.7 argoserver.go): until
        # gRPC's reconnect, each service answers 503. A 401 to a call
        # without a token means the workflow service's got through.
        while _status(f"{server.url}/api/v1/workflows/{flow_namespace}") == 503:
            procs.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"argo server for {release_namespace} answers 503 after "
                                   f"{timeout:.0f}s:\n{server.tail()}")
            time.sleep(0.5)
        yield server
    finally:
        procs.stop()
