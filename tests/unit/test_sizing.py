"""mfhelm.sizing: VM size less AKS's node reservation, against hand-computed numbers.

Rules (AKS "Node resource reservations", AKS 1.29+ Linux): kube-reserved CPU
from the table (2 cores 100m, 4 cores 140m, 8 cores 180m, 16 cores 260m);
kube-reserved memory = min(20 MiB x max pods + 50 MiB, 25% of memory); then the
100Mi hard eviction threshold. Our Bicep sets maxPods = 110 on every pool, so
20 x 110 + 50 = 2250 MiB.
"""

from __future__ import annotations

import re
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
    for size in (aks.system_vm_size, aks.services_vm_size, aks.task_vm_size):
        assert sizing.allocatable(size) is not None, size


def test_max_pods_is_what_the_bicep_sets_on_every_pool():
    bicep = (ROOT / "bicep/modules/aks.bicep").read_text()
    (value,) = re.findall(r"^var maxPodsPerNode = (\d+)$", bicep, re.M)
    assert int(value) == sizing.BICEP_MAX_PODS
    assert bicep.count("maxPods: maxPodsPerNode") == 3  # system, services, taskworkers


def test_the_default_taskworkers_pool_refuses_a_four_cpu_step():
    # The reason for the module: @resources(cpu=4) on the default D4s_v5.
    cpu, _ = sizing.allocatable(AksSettings().task_vm_size)
    assert cpu < 4000
    assert sizing.largest_step("Standard_D4s_v5") == (
        "largest step: 3.86 CPU, 13.7 GiB (Standard_D4s_v5 less AKS's reservation)")


def test_the_bicep_defaults_are_the_settings_defaults():
    # The fake cluster's nodes are sized from AksSettings(); that is what AKS
    # gets only while main.bicep's own defaults say the same.
    main = (ROOT / "bicep/main.bicep").read_text()
    aks = AksSettings()
    for param, size in (("systemVmSize", aks.system_vm_size),
                        ("servicesVmSize", aks.services_vm_size),
                        ("taskVmSize", aks.task_vm_size)):
        assert re.search(rf"^param {param} string = '{size}'$", main, re.M), param
