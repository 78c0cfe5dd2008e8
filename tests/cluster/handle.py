"""The handle the cluster tests get: where the cluster is and small helpers.

Both backends (the local control plane with KWOK nodes, and kind) produce
the same `Cluster`, so a test does not care which one it runs on.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from mfhelm import pools

if TYPE_CHECKING:
    from kubernetes import client as k8s

T = TypeVar("T")

# Node pools the fixture registers: the AKS pools, from mfhelm.pools (as
# `mfhelm up`'s kind cluster has them): taints/labels a flow pod and a
# service pod must match. Taints as a Node's spec has them.
POOL_LABEL = pools.POOL_LABEL
TASKWORKERS_TAINT = pools.TASKWORKERS_TAINT.as_dict()
SYSTEM_TAINT = pools.SYSTEM_TAINT.as_dict()
STORAGE_CLASS = "standard"


def write_kubeconfig(
    path: Path, server: str, ca: Path, cert: Path, key: Path, user: str = "admin"
) -> Path:
    """A kubeconfig with one context, certificates referenced by path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mfhelm-test",
                      "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user,
                   "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "mfhelm-test",
                      "context": {"cluster": "mfhelm-test", "user": user}}],
        "current-context": "mfhelm-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` in one step (a file written in place can be
    read half-written: the API server then reloads an empty config)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the API may be briefly unavailable; keep the last cause
            last_error = exc
        if time.monotonic() > deadline:
            cause = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{cause}")
        time.sleep(interval)


def _reviewed_as(subject: dict[str, Any], namespace: str) -> tuple[str, list[str]]:
    """The user and groups a SubjectAccessReview gives for a binding's subject."""
    kind, name = subject["kind"], subject["name"]
    if kind == "ServiceAccount":
        home = subject.get("namespace") or namespace
        return (f"system:serviceaccount:{home}:{name}",
                ["system:serviceaccounts", f"system:serviceaccounts:{home}",
                 "system:authenticated"])
    if kind == "Group":
        return "rbac-probe", [name, "system:authenticated"]
    return name, ["system:authenticated"]


@dataclass
class Cluster:
    """A running cluster for the tests.

    kubeconfig  admin kubeconfig (cluster-admin via O=system:masters, or kind's)
    server      apiserver URL, e.g. https://127.0.0.1:41234
    backend     "controlplane" (local binaries + KWOK) or "kind"
    nodes       pool name -> node name, for "system", "services", "taskworkers"
    workdir     scratch directory of this cluster (certs, logs, volumes)
    version     the Kubernetes version the cluster runs, e.g. "v1.34.4"
    exec_mounts whether a `sh` exec sees the pod's volumes at their mount paths
                (always on kind; on KWOK where the host allows mount namespaces)
    node_agent_pid  the KWOK process, leader of its own process group (local
                control plane only): stopping it silences every fake node
    authentication_config  the API server's structured authentication file
                (local control plane only), see trust_issuer
    """

    kubeconfig: Path
    server: str
    backend: str
    nodes: dict[str, str]
    workdir: Path
    version: str
    exec_mounts: bool = True
    node_agent_pid: int | None = None
    authentication_config: Path | None = None
    _pod_root: Path | None = None
    _api: Any = field(default=None, repr=False)

    # --- clients -------------------------------------------------------
    def api_client(self) -> k8s.ApiClient:
        """A kubernetes ApiClient for this cluster, shared across calls."""
        if self._api is None:
            from kubernetes import config

            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def core(self) -> k8s.CoreV1Api:
        from kubernetes import client

        return client.CoreV1Api(self.api_client())

    def apps(self) -> k8s.AppsV1Api:
        from kubernetes import client

        return client.AppsV1Api(self.api_client())

    def batch(self) -> k8s.BatchV1Api:
        from kubernetes import client

        return client.BatchV1Api(self.api_client())

    def rbac(self) -> k8s.RbacAuthorizationV1Api:
        from kubernetes import client

        return client.RbacAuthorizationV1Api(self.api_client())

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing here, for helm/mfhelm subprocesses."""
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig))

    # --- helpers -------------------------------------------------------
    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for a person (client certificate: CN=user, O=groups),
        signed by the test control plane's CA: RBAC judges them as it would
        a real user. Local control plane only (kind keeps its CA inside)."""
        from .pki import CertificateAuthority

        pki = self.workdir / "pki"
        if self.backend != "controlplane" or not (pki / "ca.key").exists():
            raise RuntimeError("user certificates need the local control plane's CA")
        ca = CertificateAuthority.load(pki)
        pair = ca.issue(f"user-{user}", user, orgs=groups)
        return write_kubeconfig(self.workdir / f"kubeconfig-{user}", self.server, pki / "ca.crt",
                                pair.cert, pair.key, user=user)

    @contextlib.contextmanager
    def trust_issuer(self, issuer: str, ca_pem: str, audience: str, *,
                     username_claim: str = "sub", groups_claim: str = "groups",
                     required_claims: tuple[str, ...] = (),
                     timeout: float = 120) -> Iterator[None]:
        """Have the API server accept JWTs from an OIDC issuer while inside,
        as AKS's API server accepts Entra tokens: ``audience`` is the `aud`
        it requires, users are named by ``username_claim`` and their groups
        (no prefix, as on AKS) come from ``groups_claim``; a token without
        one of ``required_claims`` is refused.

        The API server reloads the file it was started with
        (--authentication-config) and only swaps in an issuer whose
        discovery document and keys it could fetch. This returns once its
        metrics show the file's exact content applied, and leaves after
        the previous content is applied again. Local control plane only.
        """
        if self.authentication_config is None:
            raise RuntimeError("trusting an OIDC issuer needs the local control plane")
        path = self.authentication_config
        before = path.read_text()
        config = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AuthenticationConfiguration",
            "jwt": [{
                "issuer": {"url": issuer, "audiences": [audience],
                           "certificateAuthority": ca_pem},
                "claimMappings": {
                    "username": {"claim": username_claim, "prefix": ""},
                    "groups": {"claim": groups_claim, "prefix": ""},
                },
            }],
        }
        if required_claims:
            config["jwt"][0]["claimValidationRules"] = [
                {"expression": f"has(claims.{claim})", "message": f"no {claim} claim"}
                for claim in required_claims]
        text = yaml.safe_dump(config, sort_keys=False)
        _replace(path, text)
        try:
            self._wait_authentication_config(text, timeout, f"issuer {issuer}")
            yield
        finally:
            _replace(path, before)
            self._wait_authentication_config(before, timeout, "no issuer")

    def _wait_authentication_config(self, text: str, timeout: float, what: str) -> None:
        digest = hashlib.sha256(text.encode()).hexdigest()
        mark = f'hash="sha256:{digest}"'

        def applied() -> bool:
            resp = self.api_client().call_api("GET", f"{self.server}/metrics")
            resp.read()
            return any(line.startswith(
                "apiserver_authentication_config_controller_last_config_info{")
                and mark in line for line in resp.data.decode().splitlines())

        try:
            wait_for(applied, timeout, f"the API server to apply its authentication "
                     f"config with {what}", interval=1)
        except TimeoutError as exc:
            log = self.workdir / "logs" / "kube-apiserver.log"
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            tail = "\n".join(line for line in lines if "authentication config" in line)[-3000:]
            raise TimeoutError(f"{exc}\n{tail}") from None

    def create_namespace(self, name: str) -> str:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            self.core().create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        except ApiException as exc:
            if exc.status != 409:
                raise
        # Pods are refused until the namespace's default service account exists.
        wait_for(lambda: self.core().read_namespaced_service_account("default", name),
                 60, f"service account default in namespace {name}")
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a test's namespace and what is in it (not waited for): its
        pods stop holding the fake nodes' room for the tests after it."""
        from kubernetes.client.rest import ApiException

        try:
            self.core().delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def pod_dir(self, namespace: str, pod: str) -> Path | None:
        """Host directory where `exec` into the pod runs (None on kind: real containers)."""
        if self._pod_root is None:
            return None
        return self._pod_root / namespace / pod

    def append_pod_log(self, namespace: str, pod: str, text: str) -> bool:
        """Stand in for a container's output on KWOK nodes (which run nothing).

        Appends ``text`` to the file KWOK serves as the pod's log, in the CRI
        log format kubelets write. Returns False on kind, where only the real
        container writes its log.
        """
        if self._pod_root is None:
            return False
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with (self._pod_root / namespace / f"{pod}.log").open("a") as fh:
            for line in text.splitlines():
                fh.write(f"{stamp} stdout F {line}\n")
        return True

    def can_i(self, user: str, verb: str, resource: str, *, namespace: str | None = None,
              group: str = "", subresource: str = "", name: str = "",
              groups: list[str] | None = None) -> bool:
        """Ask the apiserver's authorizer (SubjectAccessReview) whether user may do verb."""
        from kubernetes import client

        attrs = client.V1ResourceAttributes(
            verb=verb, resource=resource, group=group, namespace=namespace,
            subresource=subresource or None, name=name or None,
        )
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user, groups=groups, resource_attributes=attrs
            )
        )
        result = client.AuthorizationV1Api(self.api_client()).create_subject_access_review(review)
        return bool(result.status.allowed)

    def service_account_can(self, account_namespace: str, account: str, verb: str,
                            resource: str, **kw: Any) -> bool:
        """`can_i` for a service account, with the groups the apiserver gives its tokens.

        ``namespace=`` (in ``kw``) is where the action happens, which may differ
        from the account's own namespace.
        """
        user, groups = _reviewed_as({"kind": "ServiceAccount", "name": account},
                                    account_namespace)
        return self.can_i(user, verb, resource, groups=groups, **kw)

    def wait_authorized(self, objs: list[dict[str, Any]], timeout: float = 30) -> None:
        """Wait until the API server's authorizer answers by these Roles and bindings.

        The RBAC authorizer reads Roles and RoleBindings from informer caches
        that trail the writes, by longer on a loaded machine: a review (or a
        request) sent right after the write can still get the old answer. For
        each RoleBinding in ``objs`` whose Role is in ``objs`` too, the first
        rule of the Role is reviewed for each subject until it is allowed.
        """
        roles = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
                 for o in objs if o["kind"] == "Role"}
        for binding in (o for o in objs if o["kind"] == "RoleBinding"):
            ns = binding["metadata"]["namespace"]
            role = roles.get((ns, binding["roleRef"]["name"]))
            if binding["roleRef"]["kind"] != "Role" or role is None:
                continue
            rule = next((r for r in role.get("rules") or [] if r.get("resources")), None)
            if rule is None:
                continue
            resource, _, subresource = rule["resources"][0].partition("/")
            review = {"verb": next((v for v in rule["verbs"] if v != "*"), "get"),
                      "resource": "pods" if resource == "*" else resource,
                      "subresource": subresource,
                      "group": next((g for g in rule.get("apiGroups") or [""] if g != "*"), ""),
                      "name": (rule.get("resourceNames") or [""])[0], "namespace": ns}
            for subject in binding.get("subjects") or []:
                user, groups = _reviewed_as(subject, ns)
                self.wait_for(lambda u=user, g=groups, r=review: self.can_i(u, groups=g, **r), timeout,
                              f"the authorizer to apply RoleBinding {ns}/"
                              f"{binding['metadata']['name']} to {user}")

    def wait_for(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        return wait_for(check, timeout, what)

    def wait_pod_ready(self, namespace: str, name: str, timeout: float = 60) -> Any:
        def ready() -> Any:
            pod = self.core().read_namespaced_pod(name, namespace)
            conditions = pod.status.conditions or []
            if not any(c.type == "Ready" and c.status == "True" for c in conditions):
                return None
            if self._pod_root is not None and not (
                self._pod_root / namespace / f"{name}.log"
            ).exists():
                return None  # KWOK not yet told where to run this pod's exec and logs
            return pod

        return wait_for(ready, timeout, f"pod {namespace}/{name} to be Ready")

    def exec(self, namespace: str, pod: str, command: list[str], *,
             stdin: bytes | None = None, container: str | None = None,
             timeout: float = 60) -> tuple[int, str, str]:
        """Run command in the pod through the exec API; (exit code, stdout, stderr)."""
        from kubernetes import client
        from kubernetes.stream import stream

        resp = stream(
            client.CoreV1Api(self.api_client()).connect_get_namespaced_pod_exec,
            pod, namespace, command=command, container=container,
            stdin=stdin is not None, stdout=True, stderr=True, tty=False,
            _preload_content=False,
        )
        out: list[str] = []
        err: list[str] = []
        try:
            if stdin is not None:
                resp.write_channel(0, stdin)
                # Without closing stdin (v5 streaming protocol) `tar x` never sees EOF.
                resp.close_channel(0)
            deadline = time.monotonic() + timeout
            while resp.is_open():
                resp.update(timeout=1)
                if resp.peek_stdout():
                    out.append(resp.read_stdout())
                if resp.peek_stderr():
                    err.append(resp.read_stderr())
                if time.monotonic() > deadline:
                    raise TimeoutError(f"exec {command!r} in {namespace}/{pod} timed out")
            status = resp.read_channel(3)  # the error channel: a metav1.Status
        finally:
            resp.close()
        return exit_code(status), "".join(out), "".join(err)


def exit_code(status_text: str) -> int:
    """The command's exit code from the Status an exec stream ends with.

    A kubelet reports a non-zero exit as reason NonZeroExitCode with the code
    in causes[ExitCode]; KWOK's exec server wraps it in a generic error whose
    message ends in "exit status N". Both are read here; anything else (the
    command could not start, the pod is gone) is an error, not an exit code.
    """
    status = yaml.safe_load(status_text) if status_text else None
    if not status or status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    found = re.search(r"exit status (\d+)", status.get("message", ""))
    if found:
        return int(found.group(1))
    raise RuntimeError(f"exec failed: {status.get('message', status_text)}")

