"""`make bench`: whole-process wall time of `mfhelm --help` and `mfhelm render`.

Prints the median of several runs against the targets (0.3 s and 1 s). A
benchmark, not a test: it reports, and exits non-zero only with --strict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit" / "azure"))
import fake_arm  # noqa: E402

TARGETS = {"mfhelm --help": 0.3, "mfhelm render": 1.0}


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
    args = ap.parse_args()
    mfhelm = str(Path(sys.executable).with_name("mfhelm"))
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
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
