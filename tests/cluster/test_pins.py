"""The Kubernetes version is written in several places; they must agree.

tools.toml [kubernetes] is the source; the control-plane build entry and the
wrapper go.mod that fixes the k8s.io/kubernetes release and its staging
modules repeat it because Go needs it spelled out.
"""

from __future__ import annotations

import re

from .controlplane import ROOT, _installer, kubernetes_version

GOMOD = ROOT / "tests" / "tools" / "gobuild" / "kubernetes" / "go.mod"


def test_control_plane_build_matches_the_pinned_kubernetes_version() -> None:
    entry = _installer().load_manifest()["gobuild"]["kubernetes"]
    assert entry["version"] == kubernetes_version()


def test_wrapper_module_requires_the_pinned_release_and_matching_staging_modules() -> None:
    version = kubernetes_version()  # v1.34.4; staging modules are v0.34.4
    staging = "v0." + version.split(".", 1)[1]
    text = GOMOD.read_text()
    assert re.search(rf"^\s*k8s\.io/kubernetes {re.escape(version)}\b", text, re.M)
    replaced = re.findall(r"^\s*(k8s\.io/[\w.-]+) => (k8s\.io/[\w.-]+) (\S+)", text, re.M)
    assert len(replaced) > 20  # every staging module, not a stray line
    assert all(src == dst and ver == staging for src, dst, ver in replaced), replaced
