"""Preflight queries (providers, VM SKUs, quota, PostgreSQL capabilities) via the real SDKs."""

from __future__ import annotations

import pytest
from fake_arm import (
    SUB,
    arm_error,
    default_skus,
    healthy_subscription,
    location_restriction,
    pg_capabilities_path,
    provider_body,
    serve_skus,
    skus_path,
    usages_path,
    vm_sku,
    zone_restriction,
)

from mfhelm.azure import preflight
from mfhelm.errors import MfhelmError

LOC = "westeurope"


def kw(fake, cred):
    return {"credential": cred, "base_url": fake.base_url}


def test_provider_states(fake_azure, credential):
    healthy_subscription(fake_azure)
    fake_azure.route(
        "GET", f"/subscriptions/{SUB}/providers/Microsoft.ContainerService", 200,
        provider_body("Microsoft.ContainerService", "NotRegistered"),
    )
    states = preflight.provider_states(SUB, **kw(fake_azure, credential))
    assert set(states) == set(preflight.REQUIRED_PROVIDERS)
    assert states["Microsoft.ContainerService"] == "NotRegistered"
    assert states["Microsoft.Compute"] == "Registered"


def test_vm_skus_follow_pages_and_read_restrictions(fake_azure, credential):
    skus = default_skus() + [
        vm_sku("Standard_NC6s_v3", "standardNCSv3Family", 6,
               restrictions=[location_restriction()]),
        vm_sku("Standard_E8s_v5", "standardESv5Family", 8,
               restrictions=[zone_restriction(["2", "3"])]),
        {"resourceType": "disks", "name": "Premium_LRS", "locations": [LOC]},
    ]
    serve_skus(fake_azure, skus)
    got = preflight.vm_skus(SUB, LOC, **kw(fake_azure, credential))

    assert "premium_lrs" not in got
    d4 = got["standard_d4s_v5"]
    assert (d4.vcpus, d4.family, d4.zones, d4.location_restricted) == (
        4, "standardDSv5Family", ("1", "2", "3"), False)
    nc = got["standard_nc6s_v3"]
    assert nc.location_restricted and nc.reason == "NotAvailableForSubscription"
    e8 = got["standard_e8s_v5"]
    assert not e8.location_restricted and e8.restricted_zones == ("2", "3")
    calls = fake_azure.calls(skus_path())
    assert len(calls) == 2  # both pages read
    assert calls[0].query["$filter"] == [f"location eq '{LOC}'"]


def test_compute_usage(fake_azure, credential):
    healthy_subscription(fake_azure)
    got = preflight.compute_usage(SUB, LOC, **kw(fake_azure, credential))
    assert got["cores"].free == 96
    dsv5 = got["standarddsv5family"]
    assert (dsv5.name, dsv5.current, dsv5.limit) == ("standardDSv5Family", 4, 100)
    assert fake_azure.calls(usages_path(LOC))


def test_postgres_capabilities(fake_azure, credential):
    healthy_subscription(fake_azure)
    caps = preflight.postgres_capabilities(SUB, LOC, **kw(fake_azure, credential))
    assert caps.versions >= {"14", "15", "16", "17"}
    assert "Standard_B1ms" in caps.skus_by_tier["Burstable"]
    assert not caps.restricted


def test_postgres_disabled_version_is_not_offered(fake_azure, credential):
    from fake_arm import pg_capabilities

    body = pg_capabilities(["15", "16"], {"Burstable": ["Standard_B1ms"]}, restricted="Enabled")
    body["value"][0]["supportedServerVersions"][1]["status"] = "Disabled"
    fake_azure.route("GET", pg_capabilities_path(LOC), 200, body)
    caps = preflight.postgres_capabilities(SUB, LOC, **kw(fake_azure, credential))
    assert caps.versions == {"15"}
    assert caps.restricted


def test_forbidden_query_names_reader_role(fake_azure, credential):
    fake_azure.route("GET", usages_path(LOC), 403, arm_error("AuthorizationFailed", "nope"))
    with pytest.raises(MfhelmError, match=r"not allowed to read compute quota.*Reader"):
        preflight.compute_usage(SUB, LOC, **kw(fake_azure, credential))


def test_unknown_location_error_is_one_line(fake_azure, credential):
    fake_azure.route(
        "GET", usages_path("nowhere"), 404,
        arm_error("NoRegisteredProviderFound", "No registered resource provider found for "
                  "location 'nowhere'."),
    )
    with pytest.raises(MfhelmError, match="could not read compute quota in nowhere: No registered"):
        preflight.compute_usage(SUB, "nowhere", **kw(fake_azure, credential))


def test_vm_skus_read_gpus_and_whether_spot_is_offered(fake_azure, credential):
    from fake_arm import t4_sku, with_capabilities

    b2 = with_capabilities(vm_sku("Standard_B2s", "standardBSFamily", 2),
                           LowPriorityCapable="False")
    serve_skus(fake_azure, [t4_sku(), b2, vm_sku("Standard_D4s_v5", "standardDSv5Family", 4)])
    got = preflight.vm_skus(SUB, LOC, **kw(fake_azure, credential))
    t4 = got["standard_nc4as_t4_v3"]
    assert (t4.family, t4.vcpus, t4.gpus, t4.spot_capable) == (
        "standardNCASv3_T4Family", 4, 1, True)
    assert (got["standard_b2s"].gpus, got["standard_b2s"].spot_capable) == (0, False)
    assert got["standard_d4s_v5"].spot_capable is None  # ARM did not say


def test_compute_usage_reads_gpu_family_and_spot_quota(fake_azure, credential):
    from fake_arm import optional_pool_usages

    fake_azure.route("GET", usages_path(LOC), 200,
                     {"value": optional_pool_usages(t4_family=(4, 8), spot=(6, 20))})
    got = preflight.compute_usage(SUB, LOC, **kw(fake_azure, credential))
    t4 = got["standardncasv3_t4family"]
    assert (t4.name, t4.free) == ("standardNCASv3_T4Family", 4)
    spot = got["lowprioritycores"]
    assert (spot.name, spot.display_name, spot.free) == (
        "lowPriorityCores", "Total Regional Low-priority vCPUs", 14)
