"""mfhelm.sizing: VM size less AKS's node reservation, against hand-computed numbers.

Rules (AKS "Node resource reservations", AKS 1.29+ Linux): kube-reserved CPU
from the table (2 cores 100m, 4 cores 140m, 8 cores 180m, 16 cores 260m);
kube-reserved memory = min(20 MiB x max pods + 50 MiB, 25% of memory); then the
100Mi hard eviction threshold. Our Bicep sets maxPods = 110 on every pool, so
20 x 110 + 50 = 2250 MiB.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from mfhelm import sizing
from mfhelm.settings import AksSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("size", "expected"), [
    # 2000m - 100m; 8192 MiB: 25% = 2048 < 2250, so 8192 - 2048 - 100 = 6044.
    ("Standard_D2s_v5", (1900, 6044)),
    # 4000m - 140m; 16384 - 2250 (< 4096) - 100 = 14034.
    ("Standard_D4s_v5", (3860, 14034)),
    # 8000m - 180m; 32768 - 2250 - 100 = 30418.
    ("Standard_D8s_v5", (7820, 30418)),
    # 16000m - 260m; 65536 - 2250 - 100 = 63186.
    ("Standard_D16s_v5", (15740, 63186)),
    # E4s_v5 is 4 vCPUs, 32 GiB: 3860m; 32768 - 2250 - 100 = 30418.
    ("Standard_E4s_v5", (3860, 30418)),
    # NC4as_T4_v3 is 4 vCPUs, 28 GiB: 3860m; 28672 - 2250 (< 7168) - 100 = 26322.
    ("Standard_NC4as_T4_v3", (3860, 26322)),
    # NC8as_T4_v3, 8 vCPUs, 56 GiB: 7820m; 57344 - 2250 - 100 = 54994.
    ("Standard_NC8as_T4_v3", (7820, 54994)),
    # NC16as_T4_v3, 16 vCPUs, 110 GiB: 15740m; 112640 - 2250 - 100 = 110290.
    ("Standard_NC16as_T4_v3", (15740, 110290)),
    # NC64as_T4_v3, 64 vCPUs, 440 GiB: 64000 - 740 = 63260m; 450560 - 2250 - 100 = 448210.
    ("Standard_NC64as_T4_v3", (63260, 448210)),
])
def test_allocatable_is_the_vm_less_aks_reservation(size, expected):
    assert sizing.allocatable(size) == expected


def test_the_25_percent_cap_and_max_pods_both_count():
    # D4s_v5 with 30 pods: 20 x 30 + 50 = 650 MiB; 16384 - 650 - 100 = 15634.
    assert sizing.allocatable("Standard_D4s_v5", max_pods=30) == (3860, 15634)
    # D4s_v5 with 250 pods (AKS's overlay default): 20 x 250 + 50 = 5050 > 4096,
    # so 25%: 16384 - 4096 - 100 = 12188.
    assert sizing.allocatable("Standard_D4s_v5", max_pods=250) == (3860, 12188)


def test_unknown_sizes_are_not_guessed():
    assert sizing.allocatable("Standard_D4as_v6") is None
    assert sizing.vm_size("Standard_NC24ads_A100_v4") is None
    assert "unknown" in sizing.largest_step("Standard_D4as_v6")


def test_size_names_match_whatever_case_azure_prints():
    assert sizing.allocatable("standard_d4s_v5") == sizing.allocatable("Standard_D4s_v5")


def test_every_default_pool_size_is_in_the_table():
    aks = AksSettings()
    for size in (aks.system_vm_size, aks.services_vm_size, aks.task_vm_size,
                 aks.gpu_vm_size, aks.spot_vm_size):
        assert sizing.allocatable(size) is not None, size


@pytest.mark.parametrize(("size", "vcpus", "gib", "gpus"), [
    # Azure's "NCasT4_v3-series" size page: vCPU, Memory: GiB, GPU columns.
    ("Standard_NC4as_T4_v3", 4, 28, 1),
    ("Standard_NC8as_T4_v3", 8, 56, 1),
    ("Standard_NC16as_T4_v3", 16, 110, 1),
    ("Standard_NC64as_T4_v3", 64, 440, 4),
])
def test_t4_sizes_are_azures(size, vcpus, gib, gpus):
    assert sizing.vm_size(size) == sizing.VmSize(vcpus, gib, gpus)


def test_cpu_sizes_have_no_gpus():
    assert sizing.vm_size("Standard_D4s_v5").gpus == 0
    assert "GPU" not in sizing.largest_step("Standard_D4s_v5")


def test_max_pods_is_what_the_bicep_sets_on_every_pool():
    bicep = (ROOT / "bicep/modules/aks.bicep").read_text()
    (value,) = re.findall(r"^var maxPodsPerNode = (\d+)$", bicep, re.M)
    assert int(value) == sizing.BICEP_MAX_PODS
    # Every pool the module declares (system, services, taskworkers, and the GPU and
    # Spot pools when it has them) sets maxPods, and to this variable.
    pools = re.findall(r"^\s*vmSize:", bicep, re.M)
    max_pods = re.findall(r"^\s*maxPods:\s*(\S+)", bicep, re.M)
    assert len(pools) >= 3
    assert max_pods == ["maxPodsPerNode"] * len(pools)


def test_the_default_taskworkers_pool_refuses_a_four_cpu_step():
    # The reason for the module: @resources(cpu=4) on the default D4s_v5.
    cpu, _ = sizing.allocatable(AksSettings().task_vm_size)
    assert cpu < 4000
    assert sizing.largest_step("Standard_D4s_v5") == (
        "largest step: 3.86 CPU, 13.7 GiB (Standard_D4s_v5 less AKS's reservation): "
        "at most @resources(cpu=3.86, memory=14715)")
    # A pod that is no step is not told a decorator.
    assert sizing.largest_step("Standard_D4s_v5", "pod") == (
        "largest pod: 3.86 CPU, 13.7 GiB (Standard_D4s_v5 less AKS's reservation)")


def test_a_gpu_size_says_its_gpus_and_the_decorator_that_reaches_them():
    # 26322 MiB = 27,600,420,864 bytes: memory=27600 (Metaflow's MB) fits, 27601 would not.
    assert sizing.largest_step("Standard_NC4as_T4_v3") == (
        "largest step: 1 GPU, 3.86 CPU, 25.7 GiB (Standard_NC4as_T4_v3 less AKS's "
        "reservation): at most @resources(gpu=1, cpu=3.86, memory=27600)")
    assert sizing.largest_step("Standard_NC64as_T4_v3").endswith(
        "at most @resources(gpu=4, cpu=63.26, memory=469982)")


@pytest.mark.parametrize(("mib", "mb"), [
    # Metaflow asks Kubernetes for "<memory>M", 10^6 bytes: never more than the MiB given.
    (14034, 14715),  # 14,715,715,584 bytes
    (1, 1),  # 1,048,576 bytes
    (953, 999),  # 999,292,928 bytes: 1000 MB would be 707,072 bytes too many
])
def test_metaflow_memory_is_decimal_megabytes_rounded_down(mib, mb):
    assert sizing.metaflow_memory(mib) == mb
    assert mb * 10**6 <= mib * 2**20 < (mb + 1) * 10**6


def test_the_bicep_defaults_are_the_settings_defaults():
    # The fake cluster's nodes are sized from AksSettings(); that is what AKS
    # gets only while main.bicep's own defaults say the same.
    main = (ROOT / "bicep/main.bicep").read_text()
    aks = AksSettings()
    for param, size in (("systemVmSize", aks.system_vm_size),
                        ("servicesVmSize", aks.services_vm_size),
                        ("taskVmSize", aks.task_vm_size)):
        assert re.search(rf"^param {param} string = '{size}'$", main, re.M), param


@pytest.mark.parametrize("size", sorted(sizing.VM_SIZES))
def test_the_printed_decorator_asks_kubernetes_for_what_fits_and_no_more(size):
    # The @resources line doctor prints, through Metaflow's own translation into a pod's
    # requests (metaflow 2.19.39, kube_utils) and Kubernetes' own quantity parser.
    with warnings.catch_warnings():  # the kubernetes package imports PyYAML's old `_yaml`
        warnings.simplefilter("ignore", DeprecationWarning)
        from kubernetes.utils.quantity import parse_quantity
        from metaflow.plugins.kubernetes.kube_utils import qos_requests_and_limits

    m = re.search(r"@resources\((?:gpu=(\d+), )?cpu=([0-9.]+), memory=(\d+)\)$",
                  sizing.largest_step(size))
    assert m, size
    gpus, cpu, memory = m.group(1), m.group(2), int(m.group(3))
    assert int(gpus or 0) == sizing.vm_size(size).gpus
    millicpu, mib = sizing.allocatable(size)
    for qos in ("Burstable", "Guaranteed"):
        requests, _ = qos_requests_and_limits(qos, cpu, memory, 10240)
        assert parse_quantity(requests["cpu"]) * 1000 == millicpu
        assert parse_quantity(requests["memory"]) <= mib * 2**20
        more, _ = qos_requests_and_limits(qos, cpu, memory + 1, 10240)
        assert parse_quantity(more["memory"]) > mib * 2**20
