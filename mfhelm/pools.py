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

SYSTEM = Pool("system", {AKS_MODE_LABEL: "system"}, (SYSTEM_TAINT,))
SERVICES = Pool("services", {POOL_LABEL: "services"})
TASKWORKERS = Pool("taskworkers", {POOL_LABEL: "taskworkers"}, (TASKWORKERS_TAINT,))
POOLS: tuple[Pool, ...] = (SYSTEM, SERVICES, TASKWORKERS)


def pool_of(node_labels: Mapping[str, str] | None,
            node_taints: Iterable[Mapping[str, Any]] | None) -> Pool | None:
    """The pool a node belongs to, or None (e.g. kind's control-plane node).
    Taints given as dicts (key, value, effect), as on a Node's spec."""
    taints = list(node_taints or ())
    for pool in POOLS:
        if pool.holds(node_labels, taints):
            return pool
    return None
