"""`mfhelm doctor`: every check against a fake ARM (real SDKs) and the real helm binary."""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
from pathlib import Path

import fake_arm
import pytest
from rich.console import Console

from mfhelm import doctor
from mfhelm.settings import parse

SUB = fake_arm.SUB
LOC = "westeurope"
HELM = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
needs_helm = pytest.mark.skipif(not os.access(HELM, os.X_OK), reason="needs the helm binary")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    gen = fake_arm.serve(tmp_path)
    server = next(gen)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
    monkeypatch.setenv("MFHELM_HELM", HELM)
    fake_arm.healthy_subscription(server, LOC)
    yield server
    gen.close()


def settings(**over):
    data = {"org_prefix": "acme", "location": LOC} | over
    return parse(data)


def run(fake, s=None, cred=None):
    return doctor.run_preflight(
        s or settings(), credential=cred or fake_arm.FakeCredential(),
        base_url=fake.base_url, subscription_id=SUB,
    )


def by_name(checks):
    return {c.name: c for c in checks}


def failing(checks):
    return [c for c in checks if not c.ok]


def rendered(checks) -> str:
    console = Console(file=io.StringIO(), width=250, record=True, color_system=None)
    console.print(doctor.render_table(checks))
    return console.export_text()


@needs_helm
def test_healthy_subscription_passes_every_check(fake):
    checks = run(fake)
    assert failing(checks) == []
    assert doctor.preflight_ok(checks)
    names = by_name(checks)
    assert names["resource providers"].detail == "8 registered"  # with the registry
    assert "VM size Standard_D2s_v5 (system, services)" in names
    assert "VM size Standard_D4s_v5 (taskworkers)" in names
    # 3 system x 2 + 3 services x 2 + 5 taskworkers x 4 vCPUs at the pools' max counts
    assert names["vCPU quota standardDSv5Family"].detail.startswith("need 32 at max pool sizes")
    assert names["vCPU quota (regional total)"].ok
    assert names["PostgreSQL 16"].ok and names["PostgreSQL Burstable Standard_B1ms"].ok
    assert "mfhelm doctor" in rendered(checks)


@needs_helm
def test_unregistered_provider_fix_is_the_register_command(fake):
    for ns in ("Microsoft.ContainerService", "Microsoft.DBforPostgreSQL"):
        fake.route("GET", f"/subscriptions/{SUB}/providers/{ns}", 200,
                   fake_arm.provider_body(ns, "NotRegistered"))
    (bad,) = failing(run(fake))
    assert bad.name == "resource providers"
    assert bad.detail == (
        "Microsoft.ContainerService is NotRegistered, Microsoft.DBforPostgreSQL is NotRegistered"
    )
    assert bad.fix == (
        "az provider register -n Microsoft.ContainerService && "
        "az provider register -n Microsoft.DBforPostgreSQL"
    )


@needs_helm
def test_the_registry_provider_is_checked_only_with_the_registry(fake):
    ns = "Microsoft.ContainerRegistry"
    fake.route("GET", f"/subscriptions/{SUB}/providers/{ns}", 200,
               fake_arm.provider_body(ns, "NotRegistered"))
    (bad,) = failing(run(fake))
    assert bad.name == "resource providers" and bad.fix == f"az provider register -n {ns}"
    fake.requests.clear()
    assert not failing(run(fake, settings(registry={"enabled": False})))
    assert not fake.calls(f"/providers/{ns}")


@needs_helm
def test_restricted_and_missing_vm_sizes_fail(fake):
    skus = [
        fake_arm.vm_sku("Standard_D2s_v5", "standardDSv5Family", 2),
        fake_arm.vm_sku("Standard_D4s_v5", "standardDSv5Family", 4,
                        restrictions=[fake_arm.location_restriction(LOC)]),
    ]
    fake_arm.serve_skus(fake, skus)
    s = settings(aks={"services_vm_size": "Standard_F8s_v9"})
    bad = by_name(failing(run(fake, s)))
    task = bad["VM size Standard_D4s_v5 (taskworkers)"]
    assert "restricted for this subscription in westeurope (NotAvailableForSubscription)" \
        in task.detail
    assert "[aks] task_vm_size" in task.fix
    missing = bad["VM size Standard_F8s_v9 (services)"]
    assert missing.detail == "not offered in westeurope"
    assert "az vm list-skus -l westeurope" in missing.fix


@needs_helm
def test_zone_restriction_alone_does_not_fail(fake):
    skus = fake_arm.default_skus()
    skus[1]["restrictions"] = [fake_arm.zone_restriction(["3"])]
    fake_arm.serve_skus(fake, skus)
    row = by_name(run(fake))["VM size Standard_D4s_v5 (taskworkers)"]
    assert row.ok and "zones 3 restricted" in row.detail


@needs_helm
def test_family_quota_short_says_how_much(fake):
    usages = fake_arm.default_usages()
    usages[2] = fake_arm.usage("standardDSv5Family", "Standard DSv5 Family vCPUs", 92, 100)
    fake.route("GET", fake_arm.usages_path(LOC), 200, {"value": usages})
    (bad,) = failing(run(fake))
    assert bad.name == "vCPU quota standardDSv5Family"
    assert bad.fix.startswith(
        "request quota for standardDSv5Family in westeurope: need 32 vCPUs, 8 free"
    )
    # settings sections in square brackets survive rich's markup
    assert "lower the *_max_count values in [aks]" in rendered([bad]).replace("\n", " ")


@needs_helm
def test_regional_quota_counts_all_families(fake):
    usages = fake_arm.default_usages()
    usages[1] = fake_arm.usage("cores", "Total Regional vCPUs", 0, 30)
    fake.route("GET", fake_arm.usages_path(LOC), 200, {"value": usages})
    # taskworkers on the E family: 12 DSv5 + 20 ESv5 = 32 regional > 30
    s = settings(aks={"task_vm_size": "Standard_E4s_v5"})
    fails = by_name(failing(run(fake, s)))
    assert set(fails) == {"vCPU quota standardESv5Family", "vCPU quota (regional total)"}
    assert "need 32 vCPUs, 30 free" in fails["vCPU quota (regional total)"].fix
    assert "need 20 vCPUs, 10 free" in fails["vCPU quota standardESv5Family"].fix


@needs_helm
def test_postgres_version_and_sku_not_offered(fake):
    fake.route(
        "GET", fake_arm.pg_capabilities_path(LOC), 200,
        fake_arm.pg_capabilities(["14", "15", "16"], {"Burstable": ["Standard_B1ms"]}),
    )
    s = settings(postgres={"version": "17", "tier": "Burstable", "sku": "Standard_B2ms"})
    bad = by_name(failing(run(fake, s)))
    assert bad["PostgreSQL 17"].detail == "not offered in westeurope (offered: 14, 15, 16)"
    assert bad["PostgreSQL 17"].fix == "set [postgres] version in mfhelm.toml to one of: 14, 15, 16"
    assert bad["PostgreSQL Burstable Standard_B2ms"].fix.endswith("Standard_B1ms")


@needs_helm
def test_postgres_tier_missing_and_region_restricted(fake):
    fake.route(
        "GET", fake_arm.pg_capabilities_path(LOC), 200,
        fake_arm.pg_capabilities(["16"], {"Burstable": ["Standard_B1ms"]}),
    )
    s = settings(postgres={"tier": "GeneralPurpose", "sku": "Standard_D2ds_v5"})
    bad = by_name(failing(run(fake, s)))
    assert "tier GeneralPurpose not offered" in bad["PostgreSQL GeneralPurpose Standard_D2ds_v5"]\
        .detail
    fake.route(
        "GET", fake_arm.pg_capabilities_path(LOC), 200,
        fake_arm.pg_capabilities(["16"], {"Burstable": ["Standard_B1ms"]}, restricted="Enabled"),
    )
    (bad2,) = failing(run(fake))
    assert bad2.name == "PostgreSQL Flexible Server"
    assert "restricted" in bad2.detail


@needs_helm
def test_one_failed_query_does_not_hide_the_others(fake):
    fake.route("GET", fake_arm.usages_path(LOC), 403,
               fake_arm.arm_error("AuthorizationFailed", "no read on usages"))
    checks = run(fake)
    (bad,) = failing(checks)
    assert bad.name == "vCPU quota" and "Reader" in bad.detail
    assert by_name(checks)["PostgreSQL 16"].ok


def test_login_failure_stops_before_azure_queries(fake):
    checks = run(fake, cred=fake_arm.FakeCredential(fail=True))
    assert [c.name for c in checks] == ["helm", "Azure subscription", "Azure login",
                                        "system pool", "services pool", "taskworkers pool"]
    login = checks[2]
    assert not login.ok and login.fix == "az login" and "AADSTS700082" in login.detail
    assert fake.requests == []


def test_no_subscription_is_a_failed_row(tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path))
    checks = doctor.run_preflight(settings(), credential=fake_arm.FakeCredential())
    sub = by_name(checks)["Azure subscription"]
    assert not sub.ok and "az login" in sub.detail and "AZURE_SUBSCRIPTION_ID" in sub.fix
    assert not doctor.preflight_ok(checks)


@needs_helm
def test_real_helm_passes_version_gate(monkeypatch):
    monkeypatch.setenv("MFHELM_HELM", HELM)
    check = doctor.check_helm()
    assert check.ok, check.detail
    assert doctor.parse_helm_version(check.detail) >= (3, 14, 0)


def _script(tmp_path: Path, output: str) -> Path:
    p = tmp_path / "helm"
    p.write_text(f"#!/bin/sh\necho '{output}'\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


def test_old_helm_fails_with_install_hint(tmp_path, monkeypatch):
    # a stand-in for an old helm: only its `version --short` output matters here
    monkeypatch.setenv("MFHELM_HELM", str(_script(tmp_path, "v3.12.3+g3a31588")))
    check = doctor.check_helm()
    assert not check.ok
    assert "3.12.3, older than 3.14" in check.detail
    assert "Helm >= 3.14" in check.fix


def test_unset_helm_path_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("MFHELM_HELM", str(tmp_path / "nope"))
    check = doctor.check_helm()
    assert not check.ok and "is not executable" in check.detail


@pytest.mark.parametrize(
    ("out", "want"),
    [("v3.14.2+gc309b6f", (3, 14, 2)), ("v4.3.1", (4, 3, 1)), ("v4.3", (4, 3, 0)),
     ("garbage", None)],
)
def test_parse_helm_version(out, want):
    assert doctor.parse_helm_version(out) == want


def test_table_shows_status_fix_and_detail():
    checks = [
        doctor.Check("helm", True, "4.3.1 (/usr/bin/helm)"),
        doctor.Check("resource providers", False, "Microsoft.Compute is NotRegistered",
                     "az provider register -n Microsoft.Compute"),
    ]
    text = rendered(checks)
    lines = text.splitlines()
    ok_line = next(line for line in lines if "helm" in line and "4.3.1" in line)
    bad_line = next(line for line in lines if "resource providers" in line)
    assert ok_line.split()[1] == "ok"
    assert "FAIL" in bad_line and "az provider register -n Microsoft.Compute" in bad_line
    assert not doctor.preflight_ok(checks)


def test_a_row_per_pool_states_the_largest_pod_it_takes(tmp_path, monkeypatch):
    # No Azure at all: the pool rows come from the settings alone, and still print.
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    s = settings(aks={"task_vm_size": "Standard_D8s_v5", "services_vm_size": "Standard_X9_v9"})
    rows = by_name(doctor.pool_size_checks(s))
    # D8s_v5: 8 vCPUs - 180m = 7.82; 32768 MiB - (20*110+50 = 2250) - 100 = 30418 MiB,
    # 29.70 GiB.
    assert rows["taskworkers pool"].detail == (
        "largest step: 7.82 CPU, 29.7 GiB (Standard_D8s_v5 less AKS's reservation): "
        "at most @resources(cpu=7.82, memory=31895)")
    assert "task_vm_size" in rows["taskworkers pool"].fix
    # D2s_v5: 2 vCPUs - 100m = 1.9; 8192 MiB - min(2250, 2048) - 100 = 6044 MiB, 5.90 GiB.
    assert rows["system pool"].detail == (
        "largest pod: 1.9 CPU, 5.9 GiB (Standard_D2s_v5 less AKS's reservation)")
    assert rows["services pool"].detail.startswith("largest pod unknown: Standard_X9_v9")
    assert all(r.ok for r in rows.values())
    assert "largest step: 7.82 CPU" in rendered(list(rows.values()))
    # The optional pools are off by default: no rows for them.
    assert set(rows) == {"system pool", "services pool", "taskworkers pool"}


# --- the sign-in app registration (issue 18) ------------------------------------------------

HOST = "metaflow.example.com"
APP_ID = "0a1b2c3d-0000-4000-8000-00000000abcd"
APP_OBJECT = "7e7e7e7e-1111-4222-8333-444444444444"
APP_DEVELOPER = ("Application Developer", "cf1c38e5-3621-4004-a7cb-879624dced7c")
SUBJECT = "system:serviceaccount:metaflow:metaflow-signin"


def run_access(fake, cred=None, **access):
    cred = cred or fake_arm.FakeCredential()
    s = settings(access={"host": HOST, "tls_secret": "metaflow-tls", **access})
    checks = doctor.run_preflight(s, credential=cred, base_url=fake.base_url,
                                  subscription_id=SUB, graph_url=fake.base_url)
    return {c.name: c for c in checks if c.name.startswith("Entra app")}, cred


def test_access_off_asks_graph_nothing(fake):
    fake_arm.serve_graph(fake)
    checks = run(fake)
    assert not [c for c in checks if c.name.startswith("Entra")]
    assert fake.calls("/v1.0/") == []


def test_users_may_register_apps_so_the_deploy_creates_it(fake):
    fake_arm.serve_graph(fake, allowed_to_create_apps=True)
    rows, cred = run_access(fake)
    (row,) = rows.values()
    assert row.ok and row.name == doctor.SIGNIN_APP
    assert row.detail == ("mfhelm deploy creates it (Microsoft Graph Bicep): users may register "
                          "applications in this tenant")
    # A token for Graph, not ARM's, was asked for; both pages of memberOf were read.
    assert any(fake_arm.GRAPH_SCOPE in scopes for scopes, _ in cred.requests)
    assert len(fake.calls("/v1.0/me/memberOf")) == 2


def test_a_role_that_registers_apps_wins_over_a_closed_tenant(fake):
    fake_arm.serve_graph(fake, allowed_to_create_apps=False,
                         roles=[fake_arm.directory_role(*APP_DEVELOPER)])
    rows, _ = run_access(fake)
    assert rows[doctor.SIGNIN_APP].ok
    assert "you hold Application Developer" in rows[doctor.SIGNIN_APP].detail


def test_no_right_to_register_apps_fails_naming_client_id(fake):
    fake_arm.serve_graph(fake, allowed_to_create_apps=False)
    rows, _ = run_access(fake)
    row = rows[doctor.SIGNIN_APP]
    assert not row.ok
    assert "users may not register applications in this tenant" in row.detail
    assert "set [access] client_id" in row.fix
    assert "\n" not in row.detail + row.fix


def test_unreadable_policy_informs_without_stopping_the_deploy(fake):
    fake_arm.serve_graph(fake, allowed_to_create_apps=None)
    rows, _ = run_access(fake)
    row = rows[doctor.SIGNIN_APP]
    assert row.ok and "Authorization_RequestDenied" in row.detail
    assert "client_id" in row.fix


def test_a_service_principal_login_is_told_the_graph_permission(fake):
    fake_arm.serve_graph(fake, service_principal=True)
    rows, _ = run_access(fake)
    assert "Application.ReadWrite.OwnedBy" in rows[doctor.SIGNIN_APP].detail
    assert fake.calls("/v1.0/policies") == []


def test_an_existing_app_set_up_for_sign_in_passes(fake):
    app = fake_arm.application(APP_ID, APP_OBJECT,
                               redirect_uris=[f"https://{HOST}/oauth2/callback"])
    fake_arm.serve_graph(fake, applications=[app],
                         credentials={APP_ID: [fake_arm.federated_credential(SUBJECT)]})
    rows, _ = run_access(fake, client_id=APP_ID)
    assert all(r.ok for r in rows.values()), rows
    assert "existing app Metaflow sign-in" in rows[doctor.SIGNIN_APP].detail
    assert rows["Entra app federated credential"].detail == SUBJECT
    # Which case applies decides what is asked: no create-rights question here.
    assert fake.calls("/v1.0/me/") == [] and fake.calls("/v1.0/policies") == []


def test_an_existing_app_missing_what_sign_in_needs_fails_with_the_commands(fake):
    app = fake_arm.application(APP_ID, APP_OBJECT, redirect_uris=["https://other/cb"],
                               identifier_uris=[], token_version=None, group_claims=None)
    fake_arm.serve_graph(fake, applications=[app])
    rows, _ = run_access(fake, client_id=APP_ID)
    settings_row = rows["Entra app settings"]
    assert not settings_row.ok
    assert settings_row.detail == (
        f"redirect URI https://{HOST}/oauth2/callback missing; needs App ID URI "
        f"api://{APP_ID} and v2 access tokens (has no URI, version 1); "
        "groupMembershipClaims is None")
    assert (f"az ad app update --id {APP_ID} --identifier-uris api://{APP_ID} "
            "--requested-access-token-version 2") in settings_row.fix
    fic = rows["Entra app federated credential"]
    assert fic.ok and "az ad app federated-credential create" in fic.fix and SUBJECT in fic.fix


def test_an_unknown_client_id_is_one_failed_row(fake):
    fake_arm.serve_graph(fake, missing=[APP_ID])
    rows, _ = run_access(fake, client_id=APP_ID)
    (row,) = rows.values()
    assert not row.ok
    assert row.detail.startswith(f"no app registration has client id {APP_ID} in this tenant")


def test_an_object_id_given_as_client_id_names_the_right_one(fake):
    app = fake_arm.application(APP_ID, APP_OBJECT)
    fake_arm.serve_graph(fake, applications=[app], missing=[])
    fake.route("GET", f"/v1.0/applications(appId='{APP_OBJECT}')", 404,
               fake_arm.graph_error("Request_ResourceNotFound", "Resource does not exist"))
    rows, _ = run_access(fake, client_id=APP_OBJECT)
    (row,) = rows.values()
    assert not row.ok
    assert row.detail == (f"{APP_OBJECT} is an app registration's object id, not its client "
                          f'id; set [access] client_id = "{APP_ID}"')


# --- the GPU and Spot pools (issue 20) ------------------------------------------------------

GPU_ON = {"gpu_enabled": True}  # Standard_NC4as_T4_v3, max 2 nodes: 8 vCPUs
SPOT_ON = {"spot_enabled": True}  # Standard_D4s_v5, max 5 nodes: 20 vCPUs


def serve_optional_pools(fake, skus=None, **usages):
    """The healthy subscription plus the T4 size and the T4 family and Spot quotas."""
    extra = [fake_arm.t4_sku()] if skus is None else skus
    fake_arm.serve_skus(fake, fake_arm.default_skus() + extra)
    fake.route("GET", fake_arm.usages_path(LOC), 200,
               {"value": fake_arm.optional_pool_usages(**usages)})


def quota_rows(checks):
    return {c.name: c for c in checks if "quota" in c.name}


@needs_helm
def test_disabled_pools_add_no_rows_and_ask_for_no_quota(fake):
    serve_optional_pools(fake, t4_family=(0, 0), spot=(0, 0))  # both would fail if asked
    checks = run(fake)
    assert failing(checks) == []
    assert not [c for c in checks if "NC4as" in c.name or "lowPriority" in c.name
                or c.name in ("gpu pool", "spot pool")]


@needs_helm
def test_gpu_pool_sku_family_quota_and_largest_step(fake):
    serve_optional_pools(fake, t4_family=(0, 8))
    checks = by_name(run(fake, settings(aks=GPU_ON)))
    assert failing(checks.values()) == []
    sku = checks["VM size Standard_NC4as_T4_v3 (gpu)"]
    assert sku.detail == "4 vCPUs, 1 GPU, standardNCASv3_T4Family, zones 1, 2, 3"
    # 2 nodes x 4 vCPUs at gpu_max_count: exactly the 8 free is enough
    assert checks["vCPU quota standardNCASv3_T4Family"].detail == (
        "need 8 at max pool sizes, 8 free (0/8)")
    # 32 vCPUs of the CPU pools + 8 of the GPU pool against the regional total
    assert checks["vCPU quota (regional total)"].detail.startswith("need 40 at max pool sizes")
    gpu = checks["gpu pool"]
    assert gpu.ok and gpu.detail == (
        "largest step: 1 GPU, 3.86 CPU, 25.7 GiB (Standard_NC4as_T4_v3 less AKS's "
        "reservation): at most @resources(gpu=1, cpu=3.86, memory=27600)")
    assert gpu.fix == "bigger steps: a larger [aks] gpu_vm_size"
    assert "spot pool" not in checks


@needs_helm
def test_gpu_family_quota_short_says_how_much_in_the_quota_rows_words(fake):
    # New subscriptions usually get no GPU family quota at all.
    serve_optional_pools(fake, t4_family=(0, 0))
    (bad,) = failing(run(fake, settings(aks=GPU_ON | {"gpu_max_count": 3})))
    assert bad.name == "vCPU quota standardNCASv3_T4Family"
    assert bad.detail == "need 12 at max pool sizes, 0 free (0/0)"
    assert bad.fix == (
        "request quota for standardNCASv3_T4Family in westeurope: need 12 vCPUs, 0 free "
        "(portal: Quotas > Compute), or lower the *_max_count values in [aks]")


@needs_helm
def test_gpu_pool_counts_in_the_regional_total(fake):
    serve_optional_pools(fake)
    usages = fake_arm.optional_pool_usages()
    usages[1] = fake_arm.usage("cores", "Total Regional vCPUs", 4, 40)  # 36 free
    fake.route("GET", fake_arm.usages_path(LOC), 200, {"value": usages})
    assert failing(run(fake)) == []  # 32 without the GPU pool
    (bad,) = failing(run(fake, settings(aks=GPU_ON)))  # 32 + 8 = 40 > 36
    assert bad.name == "vCPU quota (regional total)"
    assert bad.fix.startswith("request quota for cores in westeurope: need 40 vCPUs, 36 free")


@needs_helm
def test_gpu_size_not_offered_or_restricted(fake):
    serve_optional_pools(fake, skus=[])
    checks = run(fake, settings(aks=GPU_ON))
    (bad,) = failing(checks)  # no family quota row: the family is unknown
    assert bad.name == "VM size Standard_NC4as_T4_v3 (gpu)"
    assert bad.detail == "not offered in westeurope"
    assert bad.fix == ("choose another size for [aks] gpu_vm_size "
                       "(az vm list-skus -l westeurope -o table)")
    # the regional total still counts the pools whose size is known
    assert by_name(checks)["vCPU quota (regional total)"].detail.startswith("need 32 ")

    serve_optional_pools(fake, skus=[fake_arm.t4_sku(
        restrictions=[fake_arm.location_restriction(LOC)])])
    (bad,) = failing(run(fake, settings(aks=GPU_ON)))
    assert bad.name == "VM size Standard_NC4as_T4_v3 (gpu)"
    assert bad.detail == ("restricted for this subscription in westeurope "
                          "(NotAvailableForSubscription)")
    assert bad.fix.startswith("choose another size for [aks] gpu_vm_size, another location")


@needs_helm
def test_spot_pool_needs_spot_quota_and_not_the_standard_ones(fake):
    # DSv5 has 96 free and the regional total 96: the CPU pools need 32, and the 20 Spot
    # vCPUs of the same family would overflow both if they counted there (Azure:
    # standard quotas cover pay-as-you-go and reserved VMs, Spot VMs their own).
    serve_optional_pools(fake, spot=(0, 20))
    usages = fake_arm.optional_pool_usages(spot=(0, 20))
    usages[1] = fake_arm.usage("cores", "Total Regional vCPUs", 4, 40)
    usages[2] = fake_arm.usage("standardDSv5Family", "Standard DSv5 Family vCPUs", 4, 40)
    fake.route("GET", fake_arm.usages_path(LOC), 200, {"value": usages})
    checks = by_name(run(fake, settings(aks=SPOT_ON)))
    assert failing(checks.values()) == []
    assert checks["vCPU quota standardDSv5Family"].detail.startswith("need 32 ")
    assert checks["vCPU quota (regional total)"].detail == (
        "need 32 at max pool sizes (the Spot pool counts in lowPriorityCores), 36 free (4/40)")
    # 5 nodes x 4 vCPUs at spot_max_count: exactly the 20 free
    assert checks["vCPU quota lowPriorityCores (Spot, regional)"].detail == (
        "need 20 at max pool sizes, 20 free (0/20)")
    # the Spot pool shares its size with the task workers: one SKU row names both
    assert checks["VM size Standard_D4s_v5 (taskworkers, spot)"].ok
    spot = checks["spot pool"]
    assert spot.detail.endswith("at most @resources(cpu=3.86, memory=14715)")
    assert spot.fix == "bigger steps: a larger [aks] spot_vm_size"


@needs_helm
def test_spot_quota_short_says_how_much(fake):
    serve_optional_pools(fake, spot=(3, 10))
    s = settings(aks=SPOT_ON | {"spot_vm_size": "Standard_E4s_v5", "spot_max_count": 4})
    (bad,) = failing(run(fake, s))
    assert bad.name == "vCPU quota lowPriorityCores (Spot, regional)"
    assert bad.detail == "need 16 at max pool sizes, 7 free (3/10)"
    assert bad.fix == (
        "request quota for lowPriorityCores in westeurope: need 16 vCPUs, 7 free "
        "(portal: Quotas > Compute), or lower [aks] spot_max_count")


@needs_helm
def test_spot_quota_missing_from_the_list_fails(fake):
    fake_arm.serve_skus(fake, fake_arm.default_skus())
    (bad,) = failing(run(fake, settings(aks=SPOT_ON)))  # default usages: no lowPriorityCores
    assert bad.name == "vCPU quota lowPriorityCores (Spot, regional)"
    assert bad.detail == "no quota entry for lowPriorityCores in westeurope"


@needs_helm
def test_a_size_that_takes_no_spot_vms_fails_for_the_spot_pool_only(fake):
    d4 = fake_arm.with_capabilities(fake_arm.vm_sku("Standard_D4s_v5", "standardDSv5Family", 4),
                                    LowPriorityCapable="False")
    skus = [fake_arm.vm_sku("Standard_D2s_v5", "standardDSv5Family", 2), d4]
    fake_arm.serve_skus(fake, skus)
    fake.route("GET", fake_arm.usages_path(LOC), 200,
               {"value": fake_arm.optional_pool_usages()})
    assert failing(run(fake)) == []  # regular task workers of that size are fine
    checks = run(fake, settings(aks=SPOT_ON))
    (bad,) = failing(checks)
    assert bad.name == "Spot VM size Standard_D4s_v5"
    assert "LowPriorityCapable is False" in bad.detail
    assert "[aks] spot_vm_size" in bad.fix
    assert by_name(checks)["VM size Standard_D4s_v5 (taskworkers, spot)"].ok


@needs_helm
def test_both_pools_on_fail_and_pass_independently(fake):
    serve_optional_pools(fake, t4_family=(0, 4), spot=(0, 40))
    checks = run(fake, settings(aks=GPU_ON | SPOT_ON))
    (bad,) = failing(checks)
    assert bad.name == "vCPU quota standardNCASv3_T4Family"
    names = [c.name for c in checks]
    assert names[-5:] == ["system pool", "services pool", "taskworkers pool", "gpu pool",
                          "spot pool"]
