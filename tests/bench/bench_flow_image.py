"""`make bench`, the flow-image part: what a task pod pays at start without
the flow image, and with it.

Without it, Metaflow's task command (metaflow 2.19.39,
MetaflowEnvironment._get_install_dependencies_cmd("azure"), asked here, not
copied) pip-installs its Azure dependencies from PyPI into a fresh Python
(a fresh venv stands in for the pod's python:<minor> image; made untimed).
With it, the image's ENV sets METAFLOW_SKIP_INSTALL_DEPENDENCIES and the same
shell line skips the install. Both are the exact line, run by bash, timed as a
whole; median of several runs. A report, not a test.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path


def _install_line(python: str) -> str:
    from metaflow.metaflow_environment import MetaflowEnvironment

    env = MetaflowEnvironment(None)
    env._python = lambda: python  # type: ignore[method-assign]  # the fresh venv's
    return str(env._get_install_dependencies_cmd("azure"))


def _timed(line: str, skip: bool) -> float:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "METAFLOW_", "VIRTUAL_ENV"))}
    if skip:
        env["METAFLOW_SKIP_INSTALL_DEPENDENCIES"] = "1"
    start = time.perf_counter()
    subprocess.run(["bash", "-c", line], env=env, check=True, timeout=900)
    return time.perf_counter() - start


def bench_flow_image(runs: int) -> None:
    without: list[float] = []
    with_image: list[float] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="mfhelm-bench-flow-") as tmp:
            venv.create(Path(tmp) / "py", with_pip=True)  # untimed: the base image's Python
            line = _install_line(str(Path(tmp) / "py" / "bin" / "python"))
            with_image.append(_timed(line, skip=True))
            without.append(_timed(line, skip=False))
    a, b = statistics.median(without), statistics.median(with_image)
    print(f"task start, Metaflow's dependency install ({runs} runs, {os.cpu_count()} cores):")
    print(f"  without the flow image  {a:8.2f} s  (min {min(without):.2f}, max "
          f"{max(without):.2f}; pip from PyPI, no cache, as the pod runs it)")
    print(f"  with the flow image     {b:8.3f} s  (METAFLOW_SKIP_INSTALL_DEPENDENCIES set)")


if __name__ == "__main__":
    bench_flow_image(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
