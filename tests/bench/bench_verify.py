"""`make bench`, the verify part: wall time of `mfhelm verify` (the whole
process) on the test cluster, and each layer's seconds as its table reports
them, median of several runs.

The stack is the one tests/cluster/test_e2e_verify_core.py verifies: a
`mfhelm install --local --no-argo` release on the local control plane (KWOK
nodes), the real Metaflow and Azurite over HTTPS with tokens from the
Entra-shaped endpoint, and metaflow-local-service standing in for the
metadata service and its UI backend (tests/cluster/verify_env.py). The
install is not timed. A report, not a test.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _rows(stdout: str) -> dict[str, float]:
    lines = stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split() == ["check", "result", "seconds"])
    out = {}
    col = lines[head].index("result")
    for ln in lines[head + 1:]:
        parts = ln[col:].split()
        if parts and parts[0] == "ok":
            out[ln[:col].strip()] = float(parts[-1])
    return out


def bench_verify(runs: int) -> None:
    for path in (ROOT / "tests", ROOT / "tests" / "unit" / "azure"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import fake_arm
    from cluster import metaflow_env as mfenv
    from cluster import verify_env
    from cluster.controlplane import ToolchainMissing, start_controlplane
    from cluster.pki import CertificateAuthority

    if mfenv.azurite_binary() is None:
        print("verify bench skipped: azurite-blob not in .venv/bin (run `make test-tools`)")
        return
    with tempfile.TemporaryDirectory(prefix="mfhelm-bench-verify-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            cluster, stop = start_controlplane(tmp / "cluster")
        except ToolchainMissing as exc:
            print(f"verify bench skipped: {exc}")
            return
        (tmp / "ca").mkdir()
        ca = CertificateAuthority(tmp / "ca")
        azurite = mfenv.start_azurite(tmp / "azurite", ca, "metaflow-storage")
        outputs = fake_arm.sample_outputs()
        entra = mfenv.FakeEntra(tenant=outputs["tenantId"], client_id=outputs["identityClientId"],
                                federated_token=mfenv.federated_token(outputs))
        service = None
        try:
            with mfenv.serve_entra(ca, entra):
                service = verify_env.start_metadata_service(tmp / "service",
                                                            verify_env.chart_app_version())
                home = verify_env.user_home(tmp / "user", azurite=azurite, entra=entra,
                                            service_url=service.url, outputs=outputs)
                env = dict(home.env, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                                          f"{home.env['PATH']}")
                kc = ["--kubeconfig", str(cluster.kubeconfig)]
                mfhelm = [sys.executable, "-m", "mfhelm"]
                where = ["-n", "bench-verify", "--release", "mf"]
                done = subprocess.run([*mfhelm, "install", "--local", "--no-argo", *where,
                                       "--timeout", "5m", *kc], capture_output=True, text=True,
                                      env=env, cwd=tmp)
                if done.returncode != 0:
                    raise SystemExit(f"install failed: {done.stderr.strip()}")
                walls: list[float] = []
                layers: dict[str, list[float]] = {}
                for _ in range(runs + 1):   # the first warms the page cache
                    start = time.perf_counter()
                    done = subprocess.run([*mfhelm, "verify", "--local", *where, *kc],
                                          capture_output=True, text=True, env=env, cwd=tmp)
                    took = time.perf_counter() - start
                    if done.returncode != 0:
                        raise SystemExit(f"verify failed: {done.stdout}{done.stderr}")
                    walls.append(took)
                    for name, secs in _rows(done.stdout).items():
                        layers.setdefault(name, []).append(secs)
        finally:
            if service is not None:
                service.stop()
            azurite.stop()
            stop()
    walls, layers = walls[1:], {k: v[1:] for k, v in layers.items()}
    print(f"{'verify':<22} {'median':>8} {'min':>8} {'max':>8}")
    print(f"{'mfhelm verify (wall)':<22} {statistics.median(walls):8.3f} {min(walls):8.3f} "
          f"{max(walls):8.3f}")
    for name, secs in layers.items():
        print(f"{'  ' + name:<22} {statistics.median(secs):8.3f} {min(secs):8.3f} "
              f"{max(secs):8.3f}")
    print(f"({runs} runs, local control plane with KWOK nodes; metadata service and UI backend: "
          "metaflow-local-service standing in; Blob: Azurite over HTTPS)")
