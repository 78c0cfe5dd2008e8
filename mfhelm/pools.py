"""The three node pools of an mfhelm cluster, as Kubernetes sees them.

On AKS (bicep/modules/aks.bicep) the pools are `system` (AKS's own add-ons:
tainted CriticalAddonsOnly; AKS labels its nodes kubernetes.azure.com/mode=
system), `services` (the chart's long-lived services) and `taskworkers` (flow
pods only: labelled and tainted so that nothing else lands there). The chart
(charts/metaflow/values.yaml) selects and tolerates exactly these, and so does
the Metaflow config. Every cluster mfhelm or its tests make without Azure
takes the pools from here: `mfhelm up`'s kind cluster, the test cluster's
KWOK nodes and its kind backend. tests/unit/test_up_pools.py holds the Bicep
and the chart to the same labels and taints.

Cheap to import (no Kubernetes client): `mfhelm --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

POOL_LABEL = "mfhelm.io/pool"
# What AKS itself puts on the nodes of a System-mode pool (Bicep sets `mode`).
AKS_MODE_LABEL = "kubernetes.azure.com/mode"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str = "NoSchedule"

    def __str__(self) -> str:
        """AKS's `nodeTaints` form (and kubelet's --register-with-taints): k=v:Effect."""
        return f"{self.key}={self.value}:{self.effect}"

    def as_dict(self) -> dict[str, str]:
        """As a Node's spec.taints entry (and kubeadm's nodeRegistration.taints)."""
        return {"key": self.key, "value": self.value, "effect": self.effect}

    def toleration(self) -> dict[str, str]:
        """The toleration a pod needs to be scheduled on a node with this taint."""
        return {"key": self.key, "operator": "Equal", "value": self.value,
                "effect": self.effect}


@dataclass(frozen=True)
class Pool:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()

    def holds(self, node_labels: Mapping[str, str] | None,
              node_taints: Iterable[Mapping[str, Any]] | None) -> bool:
        """Whether a node with these labels and taints is one of this pool's:
        every label of the pool, every taint of the pool."""
        labels = node_labels or {}
        taints = {(t.get("key"), t.get("value") or "", t.get("effect"))
                  for t in node_taints or ()}
        return (all(labels.get(k) == v for k, v in self.labels.items())
                and all((t.key, t.value, t.effect) in taints for t in self.taints))


SYSTEM_TAINT = Taint("CriticalAddonsOnly", "true")
TASKWORKERS_TAINT = Taint(POOL_LABEL, "taskworkers")

# The GPU pool (off by default) is part of the task workers: it carries their
# label and taint, so the Metaflow config's one node selector and toleration
# reach it, plus a taint keyed by the GPU resource name. Kubernetes'
# ExtendedResourceToleration admission plugin (on in AKS's API server, see
# AKS's FAQ) gives a pod that requests nvidia.com/gpu the toleration for that
# key: a `@kubernetes(gpu=1)` step may land there with no argument of its own,
# and a CPU step never does.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = Taint(GPU_RESOURCE, "true")
ACCELERATOR_LABEL = "mfhelm.io/accelerator"
# AKS labels and taints the nodes of a Spot pool itself (scaleSetPriority Spot);
# the Bicep declares the same taint so that a re-deploy sees no drift.
SPOT_PRIORITY_LABEL = "kubernetes.azure.com/scalesetpriority"
SPOT_TAINT = Taint(SPOT_PRIORITY_LABEL, "spot")

SYSTEM = Pool("system", {AKS_MODE_LABEL: "system"}, (SYSTEM_TAINT,))
SERVICES = Pool("services", {POOL_LABEL: "services"})
TASKWORKERS = Pool("taskworkers", {POOL_LABEL: "taskworkers"}, (TASKWORKERS_TAINT,))
GPU = Pool("gpu", {POOL_LABEL: "taskworkers", ACCELERATOR_LABEL: "nvidia"},
           (TASKWORKERS_TAINT, GPU_TAINT))
# A step goes to Spot with @kubernetes(node_selector="mfhelm.io/pool=spot"):
# the Metaflow config tolerates the Spot taint, and the default node selector
# (mfhelm.io/pool=taskworkers) keeps every other step off these nodes.
SPOT = Pool("spot", {POOL_LABEL: "spot", SPOT_PRIORITY_LABEL: "spot"}, (SPOT_TAINT,))
SPOT_NODE_SELECTOR = f"{POOL_LABEL}=spot"
# The pools every mfhelm cluster has; `mfhelm up` makes one kind worker each.
POOLS: tuple[Pool, ...] = (SYSTEM, SERVICES, TASKWORKERS)
# Off by default on AKS ([aks] gpu_enabled, spot_enabled); the test cluster
# has one fake node of each.
OPTIONAL_POOLS: tuple[Pool, ...] = (GPU, SPOT)


def pool_of(node_labels: Mapping[str, str] | None,
            node_taints: Iterable[Mapping[str, Any]] | None) -> Pool | None:
    """The pool a node belongs to, or None (e.g. kind's control-plane node).
    Taints given as dicts (key, value, effect), as on a Node's spec."""
    taints = list(node_taints or ())
    # The GPU pool holds every label and taint of taskworkers: test it first.
    for pool in (*OPTIONAL_POOLS, *POOLS):
        if pool.holds(node_labels, taints):
            return pool
    return None
