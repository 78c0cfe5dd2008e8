"""How big a pod each node pool can take: a VM size less AKS's node reservation.

Pure data and arithmetic, no Azure call: `mfhelm doctor` uses it to say the
largest step each pool schedules, and the test cluster's fake nodes use it to
advertise the allocatable a real AKS node of the default size would.

Sources (read 2026-12):
- vCPUs and memory: Azure's VM size pages, "Dv5 and Dsv5-series" and
  "Ev5 and Esv5-series" (learn.microsoft.com/azure/virtual-machines/sizes).
  Memory is the nominal GiB Azure publishes; a real node reports a little less.
- GPUs: Azure's "NCasT4_v3-series" page: NC4as_T4_v3 4 vCPUs, 28 GiB, 1 T4;
  NC8as 8, 56, 1; NC16as 16, 110, 1; NC64as 64, 440, 4 (16 GiB per T4).
- Metaflow's units: @resources/@kubernetes `memory=N` becomes the request
  `<N>M` (kube_utils.qos_requests_and_limits, Metaflow 2.19.39): decimal
  megabytes, 10^6 bytes, not MiB; `cpu` may be fractional; `gpu=N` requests
  N `nvidia.com/gpu`, which a node advertises one per physical GPU.
- Reservation: AKS "Node resource reservations"
  (learn.microsoft.com/azure/aks/node-resource-reservations), AKS 1.29+ Linux:
  kube-reserved CPU by core count from its table; kube-reserved memory is the
  lesser of 20 MB x max pods + 50 MB and 25% of the VM's memory; plus the
  kubelet's hard eviction threshold memory.available < 100Mi. AKS applies the
  MB figures as MiB (its kubelet flag is e.g. --kube-reserved=memory=2250Mi).
  AKS's own DaemonSets (kube-proxy, CNI, CSI) request a little more on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# bicep/modules/aks.bicep sets maxPods to this on every pool (maxPodsPerNode);
# pinned against the Bicep by tests/unit/test_sizing.py.
BICEP_MAX_PODS = 110

EVICTION_HARD_MIB = 100

# vCPUs -> kube-reserved millicores (the AKS docs' table; no other core counts).
_KUBE_RESERVED_MILLICPU = {1: 60, 2: 100, 4: 140, 8: 180, 16: 260, 32: 420, 64: 740}


@dataclass(frozen=True)
class VmSize:
    vcpus: int
    memory_gib: int
    gpus: int = 0


# The sizes mfhelm defaults to (D2s_v5 system/services, D4s_v5 taskworkers) or
# documents as the next step up. A size not here is unknown: no guess.
VM_SIZES: dict[str, VmSize] = {
    "standard_d2s_v5": VmSize(2, 8),
    "standard_d4s_v5": VmSize(4, 16),
    "standard_d8s_v5": VmSize(8, 32),
    "standard_d16s_v5": VmSize(16, 64),
    "standard_d32s_v5": VmSize(32, 128),
    "standard_e2s_v5": VmSize(2, 16),
    "standard_e4s_v5": VmSize(4, 32),
    "standard_e8s_v5": VmSize(8, 64),
    "standard_e16s_v5": VmSize(16, 128),
    # NCasT4_v3 (NVIDIA T4): the GPU pool's default and its next steps up
    # (Azure's "NCasT4_v3-series" size page).
    "standard_nc4as_t4_v3": VmSize(4, 28, 1),
    "standard_nc8as_t4_v3": VmSize(8, 56, 1),
    "standard_nc16as_t4_v3": VmSize(16, 110, 1),
    "standard_nc64as_t4_v3": VmSize(64, 440, 4),
}


def vm_size(name: str) -> VmSize | None:
    return VM_SIZES.get(name.lower())


def kube_reserved_memory_mib(memory_mib: int, max_pods: int) -> int:
    return min(20 * max_pods + 50, memory_mib // 4)


def allocatable(name: str, max_pods: int = BICEP_MAX_PODS) -> tuple[int, int] | None:
    """(millicpu, MiB) a pod may request on one node of this size, or None if
    the size (or its core count in AKS's CPU table) is unknown."""
    size = vm_size(name)
    if size is None or size.vcpus not in _KUBE_RESERVED_MILLICPU:
        return None
    memory_mib = size.memory_gib * 1024
    cpu = size.vcpus * 1000 - _KUBE_RESERVED_MILLICPU[size.vcpus]
    memory = memory_mib - kube_reserved_memory_mib(memory_mib, max_pods) - EVICTION_HARD_MIB
    return cpu, memory


def metaflow_memory(mib: int) -> int:
    """MiB as the largest Metaflow `memory=` (megabytes of 10^6 bytes) that fits in it."""
    return mib * 1024 * 1024 // 1_000_000


def largest_step(name: str, what: str = "step", max_pods: int = BICEP_MAX_PODS) -> str:
    """One line for `mfhelm doctor`: the biggest pod a pool can place; for a
    pool of flow steps, as the @resources a data scientist writes."""
    got = allocatable(name, max_pods)
    size = vm_size(name)
    if got is None or size is None:
        return (f"largest {what} unknown: {name} is not in mfhelm's size table "
                "(its vCPUs and memory less AKS's reservation)")
    cpu, mib = got
    gib = math.floor(mib * 10 / 1024) / 10  # rounded down: never promise more than fits
    gpus = f"{size.gpus} GPU{'s' if size.gpus > 1 else ''}, " if size.gpus else ""
    line = f"largest {what}: {gpus}{cpu / 1000:g} CPU, {gib:g} GiB ({name} less AKS's reservation)"
    if what != "step":
        return line
    gpu_arg = f"gpu={size.gpus}, " if size.gpus else ""
    return f"{line}: at most @resources({gpu_arg}cpu={cpu / 1000:g}, memory={metaflow_memory(mib)})"
