"""What a test needs to drive Metaflow flows on Argo as a data scientist,
with every step run for real on the process kubelet: the stage (the user,
the controller, the node, the flows created) and the server `hold_flow.py`
asks whether to go on. Used by test_e2e_argo_shapes and
test_e2e_argo_upgrade."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from .argo import ArgoController
from .handle import Cluster
from .metaflow_env import FLOWS_DIR
from .process_kubelet import ProcessKubelet

ARGO = {"group": "argoproj.io", "version": "v1alpha1"}
HOLD_URL_VAR = "MFHELM_TEST_HOLD_URL"  # hold_flow.py


# --- what `hold` waits for -------------------------------------------------------

@dataclass
class HoldServer:
    """Answers `GET /<metaflow run id>` with `go` once the test released that
    run, `wait` before; counts the asks per run."""

    released: set[str] = field(default_factory=set)
    asks: dict[str, int] = field(default_factory=dict)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> HoldServer:
        hold = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                run = self.path.strip("/")
                with hold._lock:
                    hold.asks[run] = hold.asks.get(run, 0) + 1
                    body = b"go" if run in hold.released else b"wait"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def asked(self, workflow: str) -> int:
        with self._lock:
            return self.asks.get(f"argo-{workflow}", 0)

    def release(self, workflow: str) -> None:
        with self._lock:
            self.released.add(f"argo-{workflow}")


# --- the stage: the user, the controller, the node, the flows ------------------

@dataclass
class Stage:
    cluster: Cluster
    mf: Any
    alice: Path
    controller: ArgoController
    kubelet: ProcessKubelet
    hold: HoldServer
    custom: client.CustomObjectsApi
    flows: dict[str, tuple[str, str]]  # key -> (flow file, WorkflowTemplate name)
    created: dict[str, Any] = field(default_factory=dict)  # key -> `create`'s process
    runs: dict[str, str] = field(default_factory=dict)  # started up front, by test
    env: dict[str, str] = field(default_factory=dict)  # over Metaflow's, for `run`

    @property
    def ns(self) -> str:
        return str(self.mf.flow_namespace)

    @property
    def argo_major(self) -> int:
        """The controller's major version (its executor image's tag, vX.Y.Z)."""
        return int(self.controller.executor_image.rsplit(":v", 1)[1].split(".")[0])

    def logged(self, *parts: str) -> list[str]:
        """The controller's log lines holding every one of `parts` (its fields
        come in no fixed order on v4)."""
        return [line for line in self.controller.log_text().splitlines()
                if all(p in line for p in parts)]

    def run(self, key: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`python <flow> argo-workflows <args>` as alice, with the hold
        server's URL in the environment (hold_flow.py reads it at create)."""
        env = {**self.mf.env, "KUBECONFIG": str(self.alice), HOLD_URL_VAR: self.hold.url,
               **self.env}
        return subprocess.run(
            [sys.executable, str(FLOWS_DIR / self.flows[key][0]), "--no-pylint", "argo-workflows",
             *args], cwd=self.mf.home / "work", env=env, capture_output=True, text=True,
            timeout=300, check=False)

    def template(self, key: str) -> dict[str, Any]:
        """The WorkflowTemplate of flow `key`, whose `create` must have succeeded."""
        done = self.created[key]
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return self.get("workflowtemplates", self.flows[key][1])

    def create(self, key: str) -> dict[str, Any]:
        """`argo-workflows create` of flow `key`; its WorkflowTemplate."""
        self.created[key] = self.run(key, "create")
        return self.template(key)

    def trigger(self, key: str) -> str:
        run_id_file = self.mf.home / "work" / f"run-id-{key}-{uuid.uuid4().hex[:6]}"
        done = self.run(key, "trigger", "--run-id-file", str(run_id_file))
        assert done.returncode == 0, done.stderr[-3000:]
        return run_id_file.read_text().strip().removeprefix("argo-")

    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            **ARGO, namespace=self.ns, plural=plural, name=name)
        return obj

    def workflow(self, name: str) -> dict[str, Any]:
        return self.get("workflows", name)

    def nodes(self, wf: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Pod and Retry nodes by display name (retries: `flaky(0)`, `flaky(1)`)."""
        return {n["displayName"]: n for n in (wf.get("status") or {}).get("nodes", {}).values()}

    def describe(self) -> str:
        """Every workflow's nodes and every pod of this module's flows, for a failure."""
        out = []
        for wf in self.custom.list_namespaced_custom_object(**ARGO, namespace=self.ns,
                                                            plural="workflows")["items"]:
            status = wf.get("status") or {}
            out.append(f"{wf['metadata']['name']}: {status.get('phase')} "
                       f"{status.get('message', '')!r} " + str(sorted(
                           (n["displayName"], n["phase"], n.get("message", ""))
                           for n in status.get("nodes", {}).values())))
        for pod in self.cluster.core().list_namespaced_pod(self.ns).items:
            waiting = [c.message for c in pod.status.conditions or [] if c.status != "True"]
            out.append(f"pod {pod.metadata.name} on {pod.spec.node_name}: "
                       f"{pod.status.phase} {waiting}")
            if pod.spec.node_name == self.kubelet.name and pod.status.phase == "Failed":
                out.append(self.kubelet.logs(self.ns, pod.metadata.name, "main")[-1500:])
        return "\n".join(out)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 300) -> Any:
        def probe() -> Any:
            self.controller.check()
            self.kubelet.check()
            return check()

        try:
            return self.cluster.wait_for(probe, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}\nkubelet: "
                                 f"{self.kubelet.events[-30:]}\n"
                                 f"controller:\n{self.controller.tail(30)}") from None

    def finished(self, name: str, timeout: float = 300) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            wf = self.workflow(name)
            phase = (wf.get("status") or {}).get("phase")
            return wf if phase in ("Succeeded", "Failed", "Error") else None

        return dict(self.wait(f"workflow {name} to finish", done, timeout))

    def pods(self, name: str) -> list[client.V1Pod]:
        return list(self.cluster.core().list_namespaced_pod(
            self.ns, label_selector=f"workflows.argoproj.io/workflow={name}").items)

    def step_pods(self, name: str, step: str) -> list[client.V1Pod]:
        return [p for p in self.pods(name)
                if (p.metadata.annotations or {}).get("metaflow/step_name") == step]

    def step_pod(self, name: str, step: str, phases: tuple[str, ...] = ("Running",)
                 ) -> client.V1Pod:
        def found() -> client.V1Pod | None:
            return next((p for p in self.step_pods(name, step) if p.status.phase in phases),
                        None)

        return self.wait(f"step {step} of {name} to be {'/'.join(phases)}", found)

    def main_log(self, pod: client.V1Pod) -> str:
        return self.kubelet.logs(self.ns, pod.metadata.name, "main")

    def recorded(self, name: str) -> dict[str, Any]:
        """Wait until the controller has written a triggered run's first record.

        Metaflow's suspend and terminate read the run's `metaflow/...`
        annotations, which the controller copies from the template's
        workflowMetadata on its first pass and persists at the end of that
        pass, after it created the first pod (argo v3.6.10,
        operator.go: updateWorkflowMetadata, persistUpdates). Until then
        Metaflow calls the run "a non-metaflow workflow"."""
        def annotated() -> dict[str, Any] | None:
            wf = self.workflow(name)
            return wf if "metaflow/owner" in (wf["metadata"].get("annotations") or {}) else None

        return dict(self.wait(f"workflow {name} to carry Metaflow's annotations", annotated))

    def held(self, name: str) -> client.V1Pod:
        """The run's `hold` step, once its code is running (it has asked to go)."""
        self.wait(f"step hold of {name} to ask to go", lambda: self.hold.asked(name) or None)
        return self.step_pod(name, "hold")

    def read(self, code: str, pathspec: str) -> Any:
        """What the data scientist reads with the Metaflow client (metadata
        service and Blob): `code` prints one JSON line about Run(argv[1])."""
        script = ("import json, sys\nfrom metaflow import Run, namespace\nnamespace(None)\n"
                  "run = Run(sys.argv[1])\n" + code)
        done = subprocess.run([sys.executable, "-c", script, pathspec], env=self.mf.env,
                              cwd=self.mf.home / "work", capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])


def remove_flows(custom: client.CustomObjectsApi, ns: str, templates: set[str]) -> None:
    """What flows deployed as these WorkflowTemplates left in the shared flow
    namespace: their CronWorkflows first, so that they start nothing more,
    then their runs, templates and Sensors."""
    for plural in ("cronworkflows", "workflows", "workflowtemplates", "sensors"):
        try:
            items = custom.list_namespaced_custom_object(**ARGO, namespace=ns,
                                                         plural=plural)["items"]
        except ApiException as exc:
            if exc.status == 404:  # Argo Events' CRDs are not installed
                continue
            raise
        for item in items:
            meta = item["metadata"]
            ref = (item.get("spec") or {}).get("workflowTemplateRef", {}).get("name")
            if meta["name"] in templates or ref in templates:
                try:
                    custom.delete_namespaced_custom_object(**ARGO, namespace=ns,
                                                           plural=plural, name=meta["name"])
                except ApiException as exc:
                    if exc.status != 404:
                        raise
