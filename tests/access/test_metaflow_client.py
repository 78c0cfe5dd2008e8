"""The real Metaflow client (pinned in pyproject's test extra) from a data
scientist's laptop, through the real sign-in proxy, to a metadata service.

Each Metaflow command is its own process started with the config `mfhelm
config` writes with [access] on (the scope key, read by mfhelm's Metaflow
extension in mfhelm/mfext) and Azure credentials that azure-identity's
DefaultAzureCredential finds. Its tokens for the API are a real IdP user's
(metaflow_client_kit.EntraFront); oauth2-proxy checks their signature,
audience, expiry and groups; artifacts go to Azurite over HTTPS with the same
credential's storage tokens. The proxy runs with the flags and alpha config
the chart renders (chartproxy.py). The IdP's access tokens live 60 s, so a
run with a 75 s step and a notebook session that idles past a token's end
only work if every process gets a new token when its own runs out.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import accesskit
import metaflow_client_kit as kit
import pytest
from chartproxy import signin_proxy
from cluster import metaflow_env as mfenv
from cluster.pki import CertificateAuthority

pytestmark = pytest.mark.timeout(600)

# Long enough that azure-identity (which reuses a token it got under 30 s ago)
# answers our renewal, 15 s before the end, with a new one.
TOKEN_TTL = 60
USER = "alice@example.com"          # in data-scientists (allowed in)
OUTSIDER = "olga@example.com"       # in outsiders (signs in, not allowed)
HOST = "metaflow.example.com"

FLOW = '''
import time
from metaflow import FlowSpec, Parameter, step


class SignInFlow(FlowSpec):
    wait = Parameter("wait", type=int, default=0)

    @step
    def start(self):
        self.x = 41
        self.next(self.middle)

    @step
    def middle(self):
        time.sleep(self.wait)
        self.y = self.x + 1
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SignInFlow()
'''

# A notebook's cells: read, idle past the token's end, read again. (Not
# `run.successful`: it GETs one artifact by name, a route metaflow-local-service
# 0.2.0 lacks.)
NOTEBOOK = '''
import sys, time
from metaflow import Flow, namespace
namespace(None)
run = Flow("SignInFlow")[sys.argv[1]]
print("first", run.id == sys.argv[1], run["middle"].task.data.y, flush=True)
time.sleep(float(sys.argv[2]))
run = Flow("SignInFlow")[sys.argv[1]]
print("again", [s.id for s in run], run["middle"].task.data.y, flush=True)
'''


@dataclass
class Stack:
    mf: mfenv.MetaflowEnv
    front: kit.EntraFront
    proxy: accesskit.Proxy
    service: kit.Service
    idp: Any

    @property
    def service_url(self) -> str:
        return f"{self.proxy.url}/metadata"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`python signin_flow.py --no-pylint <args>` as the data scientist would."""
        return subprocess.run([sys.executable, "signin_flow.py", "--no-pylint", *args],
                              cwd=self.mf.home / "work", env=self.mf.env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def python(self, code: str, *args: str, timeout: float = 300
               ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *args], cwd=self.mf.home / "work",
                              env=self.mf.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def proxy_log(self) -> list[tuple[str, str, str, int]]:
        """(user, method, path, status) of every request oauth2-proxy logged."""
        out = []
        # <client> - <request id> - <user> [<time>] <host> <method> <upstream> "<uri>" ...
        pattern = re.compile(r' - \S+ - (?P<user>\S+) \[[^\]]+\] \S+ (?P<method>[A-Z]+) \S+ '
                             r'"(?P<path>[^"]+)" HTTP/[0-9.]+ "[^"]*" (?P<status>\d{3}) ')
        for line in self.proxy.log.read_text(errors="replace").splitlines():
            m = pattern.search(line)
            if m:
                out.append((m["user"], m["method"], m["path"], int(m["status"])))
        return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, start_idp: Callable[..., Any],
          oauth2_proxy_binary: Path) -> Iterator[Stack]:
    import fake_arm

    from mfhelm.settings import parse

    if mfenv.azurite_binary() is None:
        pytest.skip(reason="azurite-blob not in .venv/bin (run `make test-tools`)")
    work = tmp_path_factory.mktemp("metaflow-client")
    idp = start_idp(access_token_ttl=f"{TOKEN_TTL}s")
    (work / "ca").mkdir()
    ca = CertificateAuthority(work / "ca")
    outputs = fake_arm.sample_outputs() | {"signinClientId": idp.client_id}
    settings = parse({"org_prefix": "acme", "location": "westeurope",
                      "access": {"host": HOST, "tls_secret": "metaflow-tls"}})
    azurite = mfenv.start_azurite(work / "azurite", ca, "metaflow-storage")
    service: kit.Service | None = None
    proxy: accesskit.Proxy | None = None
    authorize: accesskit.Proxy | None = None
    try:
        service = kit.start_metadata_service(work / "service")
        # oauth2-proxy with the flags and alpha config the chart renders (every
        # backend route pointed at the metadata service; laptops use /metadata/).
        chart = signin_proxy(idp, service.url, work / "chart",
                             {"adminGroups": ["admins"], "dataScientists": ["data-scientists"]})
        # The pod's two containers: the authorize one, then the sign-in one.
        assert chart.sidecar is not None
        authorize = accesskit.start_proxy(oauth2_proxy_binary, work / "authorize",
                                          chart.sidecar.args, chart.sidecar.env,
                                          chart.sidecar.port)
        proxy = accesskit.start_proxy(oauth2_proxy_binary, work / "proxy", chart.args,
                                      chart.env, chart.port)
        front = kit.EntraFront(tenant=outputs["tenantId"],
                               client_id=outputs["identityClientId"],
                               federated_token=mfenv.federated_token(outputs), idp=idp,
                               user=USER)
        with kit.serve_entra_front(ca, front):
            mf = mfenv.build_metaflow_env(
                work / "user", azurite=azurite, entra=front,  # type: ignore[arg-type]
                metadata=mfenv.FakeMetadata(url=f"{proxy.url}/metadata"),
                outputs=outputs, settings=settings)
            # The entry point's URL is https://<host>/metadata; here the proxy's own
            # (an environment variable, which Metaflow prefers to the file).
            mf.env["METAFLOW_SERVICE_URL"] = f"{proxy.url}/metadata"
            (mf.home / "work" / "signin_flow.py").write_text(FLOW)
            yield Stack(mf, front, proxy, service, idp)
    finally:
        if proxy is not None:
            accesskit.stop(proxy.proc)
        if authorize is not None:
            accesskit.stop(authorize.proc)
        if service is not None:
            service.stop()
        azurite.stop()


def _run_id(output: str) -> str:
    m = re.search(r"Workflow starting \(run-id (\S+)\)", output)
    assert m, output[-3000:]
    return m[1]


def test_the_config_carries_the_scope_and_no_token(stack: Stack) -> None:
    config = json.loads(stack.mf.config_file.read_text())
    assert config[kit.SCOPE_KEY] == kit.api_scope(stack.idp.client_id)
    assert config["METAFLOW_UI_URL"] == f"https://{HOST}/"
    text = stack.mf.config_file.read_text()
    assert "Bearer" not in text and "eyJ" not in text      # no JWT, no secret
    assert not any("secret" in k.lower() or "token" in k.lower() for k in config)


def test_a_run_records_through_the_proxy_across_token_renewals(stack: Stack) -> None:
    issued_before = len(stack.front.api_issued)
    started = time.time()
    done = stack.run("run", "--wait", str(TOKEN_TTL + 15))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    run_id = _run_id(out)
    assert "Traceback" not in out and "HeartBeat request" not in out, out[-4000:]
    # The link Metaflow prints goes to the UI behind the entry point.
    assert f"https://{HOST}/SignInFlow/{run_id}" in out

    tokens = stack.front.tokens_issued()[issued_before:]
    assert len(set(tokens)) >= 2, "no process asked for a new token after the first expired"
    log = [r for r in stack.proxy_log() if r[2].startswith("/metadata/")]
    # oauth2-proxy names a bearer's user by `sub`; every request was alice's.
    sub = accesskit.jwt_claims(tokens[0])["sub"]
    assert log and all(user == sub for user, *_ in log), log[:5]
    # 404s are Metaflow's get-before-create; nothing was refused.
    refused = [r for r in log if r[3] in (401, 403) or r[3] >= 500]
    assert not refused, refused
    # The run heartbeat and the end step's records came after the first token had expired.
    assert time.time() - started > TOKEN_TTL + 15
    posts = [r for r in log if r[1] == "POST" and "/runs/" + run_id in r[2]]
    assert any(p[2].endswith("/heartbeat") for p in posts)
    assert any("/steps/end/" in p[2] for p in posts)

    # What the service recorded, read back directly (not through the proxy).
    import requests

    steps = requests.get(f"{stack.service.url}/flows/SignInFlow/runs/{run_id}/steps",
                         timeout=10).json()
    assert {s["step_name"] for s in steps} >= {"start", "middle", "end"}
    # Artifacts went to Blob (Azurite) with the user's storage token, untouched by sign-in.
    container, prefix = stack.mf.sysroot
    assert any(f"/{run_id}/middle/" in b
               for b in stack.mf.azurite.blob_names(container, f"{prefix}/SignInFlow/"))


def test_a_notebook_reads_results_for_longer_than_a_token_lives(stack: Stack) -> None:
    done = stack.run("run")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run_id = _run_id(done.stdout + done.stderr)
    issued_before = len(stack.front.api_issued)
    seen = stack.python(NOTEBOOK, run_id, str(TOKEN_TTL + 5))
    assert seen.returncode == 0, seen.stderr[-4000:]
    lines = seen.stdout.splitlines()
    assert lines[0] == "first True 42", seen.stdout
    assert lines[1] == "again ['end', 'middle', 'start'] 42", seen.stdout
    assert len(set(stack.front.tokens_issued()[issued_before:])) >= 2


def test_flow_pods_get_the_internal_url_and_no_token(stack: Stack) -> None:
    done = stack.run("argo-workflows", "create", "--only-json")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    text = done.stdout
    template = json.loads(text[text.index("{"):])
    envs = {e["name"]: e.get("value") for t in template["spec"]["templates"]
            for e in (t.get("container") or {}).get("env", [])}
    assert envs["METAFLOW_SERVICE_URL"] == stack.mf.config["METAFLOW_SERVICE_INTERNAL_URL"]
    assert json.loads(envs["METAFLOW_SERVICE_HEADERS"]) == {}
    assert kit.SCOPE_KEY not in text
    for _, token in stack.front.api_issued:
        assert token not in text


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-4000:]
    assert "Metaflow service sign-in" in out, out[-3000:]
    return out


def test_expired_sign_in_says_run_az_login(stack: Stack) -> None:
    stack.front.refuse_api = True
    try:
        done = stack.run("run")
    finally:
        stack.front.refuse_api = False
    out = _one_line_error(done)
    assert "no Entra token for" in out and "run `az login`" in out, out[-3000:]
    assert "AADSTS700024" in out, out[-3000:]


def test_a_user_outside_the_groups_is_told_who_they_are_and_what_to_ask(stack: Stack) -> None:
    stack.front.user, held = OUTSIDER, dict(stack.front._held)
    stack.front._held.clear()
    try:
        done = stack.run("run")
    finally:
        stack.front.user = USER
        stack.front._held.clear()
        stack.front._held.update(held)
    out = _one_line_error(done)
    assert f"refused you as {OUTSIDER} (403)" in out, out[-3000:]
    assert "mfhelm grant" in out
