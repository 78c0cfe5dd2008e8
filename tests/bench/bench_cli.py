"""`make bench`: whole-process wall time of `mfhelm --help` and `mfhelm render`,
of `mfhelm install --local` against a raw `helm upgrade --install --wait`,
and of `mfhelm verify` on the test cluster (bench_verify.py).

Prints the median of several runs against the targets (0.3 s and 1 s, and an
install at most 1.3x the raw helm). The install comparison runs on the test
control plane (tests/cluster/controlplane.py, started here outside pytest),
alternating the two, each run a fresh release in a fresh namespace. The raw
helm gets the same chart (the copy mfhelm installs, without the subcharts
this machine cannot fetch), the same values, the same flags mfhelm passes,
and its namespaces and DB Secret made beforehand, untimed. A benchmark, not
a test: it reports, and exits non-zero only with --strict.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit" / "azure"))
import fake_arm  # noqa: E402

ROOT = HERE.parents[1]
TARGETS = {"mfhelm --help": 0.3, "mfhelm render": 1.0}
INSTALL_RATIO = 1.3


def timed(cmd: list[str], cwd: Path, runs: int) -> list[float]:
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=True)  # warm the page cache
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, capture_output=True, check=True)
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--install-runs", type=int, default=4,
                    help="alternating install runs on the test control plane (0: skip)")
    ap.add_argument("--verify-runs", type=int, default=3,
                    help="`mfhelm verify` runs on the test control plane (0: skip)")
    ap.add_argument("--flow-image-runs", type=int, default=3,
                    help="task-start dependency installs, with and without the flow image "
                    "(0: skip; needs PyPI)")
    args = ap.parse_args()
    mfhelm = str(Path(sys.executable).with_name("mfhelm"))
    # The venv's pinned helm first, however this script was started.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "mfhelm.toml").write_text('org_prefix = "acme"\nlocation = "westeurope"\n')
        (work / "outputs.json").write_text(json.dumps(fake_arm.arm_outputs(fake_arm.sample_outputs())))
        cases = {
            "mfhelm --help": [mfhelm, "--help"],
            "mfhelm render": [mfhelm, "render", "--outputs", "outputs.json", "-o", "values.yaml"],
        }
        missed = False
        print(f"{'command':<16} {'median':>8} {'min':>8} {'max':>8} {'target':>8}")
        for name, cmd in cases.items():
            times = timed(cmd, work, args.runs)
            med = statistics.median(times)
            ok = med <= TARGETS[name]
            missed |= not ok
            print(f"{name:<16} {med:8.3f} {min(times):8.3f} {max(times):8.3f} "
                  f"{TARGETS[name]:8.1f} {'ok' if ok else 'MISSED'}")
        print(f"({args.runs} runs each, {os.cpu_count()} cores)")
    if args.install_runs > 0:
        missed |= not bench_install(mfhelm, args.install_runs)
    if args.verify_runs > 0:
        from bench_verify import bench_verify

        bench_verify(args.verify_runs)
    if args.flow_image_runs > 0:
        from bench_flow_image import bench_flow_image

        bench_flow_image(args.flow_image_runs)
    return 1 if missed and args.strict else 0


def bench_install(mfhelm: str, runs: int) -> bool:
    """Median wall time of `mfhelm install --local --no-argo` and of the raw
    helm install it wraps, alternating; True when the ratio meets the target."""
    sys.path.insert(0, str(ROOT))
    from tests.cluster.controlplane import ToolchainMissing, start_controlplane

    with tempfile.TemporaryDirectory(prefix="mfhelm-bench-") as tmp:
        try:
            cluster, stop = start_controlplane(Path(tmp) / "cluster")
        except ToolchainMissing as exc:
            print(f"install bench skipped: {exc}")
            return True
        try:
            return _compare_installs(mfhelm, cluster, Path(tmp), runs)
        finally:
            stop()


def _compare_installs(mfhelm: str, cluster, tmp: Path, runs: int) -> bool:
    from mfhelm import helm as helm_mod
    from mfhelm import kube, stack
    from mfhelm import values as values_mod

    env = cluster.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    helm = helm_mod.helm_binary()
    chart = helm_mod.drop_missing_dependencies(helm_mod.find_chart())
    api = kube.api_client(str(cluster.kubeconfig))
    kc = str(cluster.kubeconfig)

    def mfhelm_install(ns: str) -> list[str]:
        return [mfhelm, "install", "--local", "--no-argo", "-n", ns, "--release", "mf",
                "--timeout", "4m", "--kubeconfig", kc]

    def raw_install(ns: str) -> list[str]:
        """The namespaces, the DB Secret and the values file, untimed; then
        the helm command mfhelm runs (helm.Helm.install_or_upgrade)."""
        target = stack.Target("mf", ns, kc)
        values = values_mod.argo_watches_flow_namespace(values_mod.local_values(
            argo=False, airflow=False, flow_namespace=values_mod.flows_namespace_for(ns)), ns)
        for name in (ns, stack.flow_namespace(values, target)):
            kube.ensure_namespace(api, name, stack.POD_SECURITY_LABELS)
        kube.apply_secret(api, ns, values_mod.DB_SECRET, {values_mod.DB_SECRET_KEY: "bench"})
        vals = tmp / f"{ns}.yaml"
        vals.write_text(json.dumps(values))
        return [helm, "upgrade", "mf", str(chart), "--install", "--namespace", ns,
                "--create-namespace", "--history-max", "10", "--output", "json",
                "--timeout", "4m", "--values", str(vals), "--rollback-on-failure",
                "--wait", "--wait-for-jobs", "--kubeconfig", kc]

    def once(kind: str, i: int) -> float:
        ns = f"bench-{kind}-{i}"
        cmd = mfhelm_install(ns) if kind == "mfhelm" else raw_install(ns)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{kind} install failed: {proc.stderr.strip()}")
        return took

    try:
        once("mfhelm", 0), once("helm", 0)  # warm-up: page cache, API discovery
        times: dict[str, list[float]] = {"mfhelm": [], "helm": []}
        for i in range(1, runs + 1):
            order = ("mfhelm", "helm") if i % 2 else ("helm", "mfhelm")
            for kind in order:
                times[kind].append(once(kind, i))
    finally:
        if chart != helm_mod.find_chart():
            shutil.rmtree(chart.parent, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["mfhelm"] / med["helm"]
    ok = ratio <= INSTALL_RATIO
    print(f"{'install':<16} {'median':>8} {'min':>8} {'max':>8}")
    for kind, label in (("mfhelm", "mfhelm install"), ("helm", "helm upgrade")):
        print(f"{label:<16} {med[kind]:8.3f} {min(times[kind]):8.3f} {max(times[kind]):8.3f}")
    print(f"ratio {ratio:.2f}x (target {INSTALL_RATIO}x) {'ok' if ok else 'MISSED'} "
          f"({runs} alternating runs each, local control plane with KWOK nodes)")
    return ok


if __name__ == "__main__":
    sys.exit(main())
