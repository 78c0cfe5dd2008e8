"""`mfhelm doctor`: find what would make a deployment fail, before deploying.

The Terraform stack this project replaces left quota, SKU-capacity and
provider-registration failures for the user to decode from a half-finished
apply. Every check here is read-only and each failure says the command or
setting that fixes it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from mfhelm.errors import MfhelmError
from mfhelm.helm import HELM_ENV, MIN_HELM, find_helm

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from rich.table import Table

    from mfhelm.azure.entra import Graph
    from mfhelm.azure.preflight import PostgresCapabilities, Usage, VmSku
    from mfhelm.settings import Settings

_HELM_VERSION_RE = re.compile(r"v?([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def preflight_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks)


# --- helm -------------------------------------------------------------------------------

def parse_helm_version(output: str) -> tuple[int, int, int] | None:
    """`helm version --short` prints e.g. `v3.14.2+gc309b6f` or `v4.3.1`."""
    m = _HELM_VERSION_RE.search(output)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_helm() -> Check:
    name = "helm"
    install = "install Helm >= 3.14 (https://helm.sh/docs/intro/install/) or set MFHELM_HELM"
    helm = find_helm()
    if helm is None:
        where = f"${HELM_ENV}={os.environ[HELM_ENV]} is not executable" if os.environ.get(
            HELM_ENV) else "no `helm` on PATH"
        return Check(name, False, where, install)
    from mfhelm import proc as children

    try:
        proc = children.run([helm, "version", "--short"], timeout=30, what="helm version")
    except MfhelmError as exc:
        return Check(name, False, f"{helm} did not run ({exc})", install)
    version = parse_helm_version(proc.stdout) if proc.returncode == 0 else None
    if version is None:
        return Check(name, False, f"{helm} version unreadable: {proc.stdout.strip()!r}", install)
    shown = ".".join(map(str, version))
    if version[:2] < MIN_HELM:
        return Check(name, False, f"{helm} is {shown}, older than 3.14", install)
    return Check(name, True, f"{shown} ({helm})")


# --- Azure ------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodePool:
    """One AKS node pool as the settings size it: the most the autoscaler may ask for."""

    name: str  # the pool's name in the Bicep: system, services, taskworkers, gpu, spot
    key: str  # its settings' prefix in [aks]: system_vm_size, task_max_count, ...
    vm_size: str
    max_count: int
    spot: bool = False  # Spot VMs: their vCPUs count against lowPriorityCores only
    steps: bool = False  # flow steps run there

    @property
    def size_setting(self) -> str:
        return f"[aks] {self.key}_vm_size"


def node_pools(settings: Settings) -> list[NodePool]:
    """The pools a deployment with these settings creates; the GPU and Spot pools
    only when enabled."""
    aks = settings.aks
    pools = [
        NodePool("system", "system", aks.system_vm_size, aks.system_max_count),
        NodePool("services", "services", aks.services_vm_size, aks.services_max_count),
        NodePool("taskworkers", "task", aks.task_vm_size, aks.task_max_count, steps=True),
    ]
    if aks.gpu_enabled:
        pools.append(NodePool("gpu", "gpu", aks.gpu_vm_size, aks.gpu_max_count, steps=True))
    if aks.spot_enabled:
        pools.append(NodePool("spot", "spot", aks.spot_vm_size, aks.spot_max_count,
                              spot=True, steps=True))
    return pools


def _provider_check(states: dict[str, str]) -> Check:
    missing = [ns for ns, state in states.items() if state != "Registered"]
    if not missing:
        return Check("resource providers", True, f"{len(states)} registered")
    detail = ", ".join(f"{ns} is {states[ns]}" for ns in missing)
    fix = " && ".join(f"az provider register -n {ns}" for ns in missing)
    return Check("resource providers", False, detail, fix)


def _sku_checks(settings: Settings, skus: dict[str, VmSku]) -> list[Check]:
    loc = settings.location
    by_size: dict[str, list[NodePool]] = {}
    for pool in node_pools(settings):
        by_size.setdefault(pool.vm_size, []).append(pool)
    checks = []
    for size, pools in by_size.items():
        name = f"VM size {size} ({', '.join(p.name for p in pools)})"
        setting = " / ".join(p.size_setting for p in pools)
        sku = skus.get(size.lower())
        if sku is None:
            checks.append(Check(
                name, False, f"not offered in {loc}",
                f"choose another size for {setting} (az vm list-skus -l {loc} -o table)",
            ))
        elif sku.location_restricted:
            checks.append(Check(
                name, False,
                f"restricted for this subscription in {loc} ({sku.reason or 'restricted'})",
                f"choose another size for {setting}, another location, or ask Azure support "
                f"to lift the restriction on {size} in {loc}",
            ))
        else:
            usable = [z for z in sku.zones if z not in sku.restricted_zones]
            note = f"; zones {', '.join(sku.restricted_zones)} restricted" \
                if sku.restricted_zones else ""
            zones = f", zones {', '.join(usable)}" if usable else ""
            gpus = f", {sku.gpus} GPU{'s' if sku.gpus > 1 else ''}" if sku.gpus else ""
            checks.append(Check(
                name, True, f"{sku.vcpus} vCPUs{gpus}, {sku.family}{zones}{note}"))
            if any(p.spot for p in pools) and sku.spot_capable is False:
                checks.append(Check(
                    f"Spot VM size {size}", False,
                    f"offered in {loc}, but not as a Spot VM (LowPriorityCapable is False)",
                    "choose another size for [aks] spot_vm_size (Azure offers no Spot VMs of "
                    "the B-series or of promo sizes)",
                ))
    return checks


SPOT_QUOTA = "lowPriorityCores"


def _quota_checks(
    settings: Settings, skus: dict[str, VmSku], usages: dict[str, Usage]
) -> list[Check]:
    """Regular VMs draw on two quotas at once, their family's and the regional
    total (`cores`); Spot VMs on a third alone, the regional Spot total
    (lowPriorityCores), whatever their family (Azure's "Increase spot vCPU
    family quotas": standard quotas apply to pay-as-you-go and reserved VMs,
    Spot quotas to Spot VMs across all VM families)."""
    loc = settings.location
    need_by_family: dict[str, int] = {}
    total = 0
    spot: int | None = None
    for pool in node_pools(settings):
        sku = skus.get(pool.vm_size.lower())
        if sku is None or not sku.family:
            continue  # the SKU check already failed
        vcpus = sku.vcpus * pool.max_count
        if pool.spot:
            spot = (spot or 0) + vcpus
            continue
        need_by_family[sku.family] = need_by_family.get(sku.family, 0) + vcpus
        total += vcpus
    checks = []
    lower = "lower the *_max_count values in [aks]"
    wanted = [(fam, need, lower) for fam, need in need_by_family.items()]
    wanted.append(("cores", total, lower))
    if spot is not None:
        wanted.append((SPOT_QUOTA, spot, "lower [aks] spot_max_count"))
    for key, need, fewer in wanted:
        if key == "cores":
            name = "vCPU quota (regional total)"
        elif key == SPOT_QUOTA:
            name = f"vCPU quota {SPOT_QUOTA} (Spot, regional)"
        else:
            name = f"vCPU quota {key}"
        usage = usages.get(key.lower())
        if usage is None:
            checks.append(Check(
                name, False, f"no quota entry for {key} in {loc}",
                f"check Usage + quotas for {key} in {loc} in the Azure portal",
            ))
            continue
        spot_note = " (the Spot pool counts in lowPriorityCores)" \
            if key == "cores" and spot is not None else ""
        detail = (f"need {need} at max pool sizes{spot_note}, {usage.free} free "
                  f"({usage.current}/{usage.limit})")
        if need <= usage.free:
            checks.append(Check(name, True, detail))
        else:
            checks.append(Check(
                name, False, detail,
                f"request quota for {usage.name} in {loc}: need {need} vCPUs, {usage.free} free "
                f"(portal: Quotas > Compute), or {fewer}",
            ))
    return checks


def _postgres_checks(settings: Settings, caps: PostgresCapabilities) -> list[Check]:
    pg, loc = settings.postgres, settings.location
    if caps.restricted:
        return [Check(
            "PostgreSQL Flexible Server", False,
            f"{loc} is restricted for this subscription",
            f"choose another location, or ask Azure support to enable Flexible Server in {loc}",
        )]
    checks = []
    versions = ", ".join(sorted(caps.versions, key=int)) or "none"
    if pg.version in caps.versions:
        checks.append(Check(f"PostgreSQL {pg.version}", True, f"offered in {loc}"))
    else:
        checks.append(Check(
            f"PostgreSQL {pg.version}", False, f"not offered in {loc} (offered: {versions})",
            f"set [postgres] version in mfhelm.toml to one of: {versions}",
        ))
    name = f"PostgreSQL {pg.tier} {pg.sku}"
    tier_skus = caps.skus_by_tier.get(pg.tier)
    if tier_skus is None:
        tiers = ", ".join(sorted(caps.skus_by_tier)) or "none"
        checks.append(Check(
            name, False, f"tier {pg.tier} not offered in {loc} (offered: {tiers})",
            f"set [postgres] tier in mfhelm.toml to one of: {tiers}",
        ))
    elif pg.sku not in tier_skus:
        offered = ", ".join(sorted(tier_skus)[:6]) + (" ..." if len(tier_skus) > 6 else "")
        checks.append(Check(
            name, False, f"SKU not offered in {loc} for {pg.tier}",
            f"set [postgres] sku in mfhelm.toml to one of: {offered or 'none'}",
        ))
    else:
        checks.append(Check(name, True, f"offered in {loc}"))
    return checks


# --- the sign-in app registration (issue 18) ---------------------------------------------

SIGNIN_APP = "Entra app for sign-in"


def signin_subject(settings: Settings) -> str:
    """The sign-in proxy's ServiceAccount as its tokens name it (<release>-signin)."""
    return f"system:serviceaccount:{settings.helm.namespace}:{settings.helm.release}-signin"


def access_checks(settings: Settings, graph: Graph) -> list[Check]:
    """Which case applies for the sign-in app, and whether it can work: the deploy
    creates it (may this identity register apps?), or [access] client_id names an
    existing one (does it exist, and is it set up for the proxy and for laptops?)."""
    from mfhelm.azure import entra

    access = settings.access
    if not access.client_id:
        right = entra.may_create_apps(graph)
        where = "mfhelm deploy creates it (Microsoft Graph Bicep)"
        if right.may is False:
            return [Check(SIGNIN_APP, False, f"{where}, but {right.why}",
                          "ask an Entra admin to register the app and set [access] client_id "
                          "(bicep/README.md, 'Sign-in app'), or for the Application Developer "
                          "role")]
        fix = "" if right.may else ("if the deploy is refused: set [access] client_id to an app "
                                    "an admin registered (bicep/README.md, 'Sign-in app')")
        return [Check(SIGNIN_APP, True, f"{where}: {right.why}", fix)]
    app = entra.find_app(graph, access.client_id)
    rows = [Check(SIGNIN_APP, True,
                  f"existing app {app.display_name or app.app_id} ([access] client_id); "
                  "the deploy creates no Graph resources")]
    redirect = f"https://{access.host}/oauth2/callback"
    problems, fixes = [], []
    if redirect not in app.redirect_uris:
        problems.append(f"redirect URI {redirect} missing")
        fixes.append(f"add web redirect URI {redirect}")
    uri = f"api://{app.app_id}"
    if uri not in app.identifier_uris or app.access_token_version != 2:
        problems.append(f"needs App ID URI {uri} and v2 access tokens "
                        f"(has {', '.join(app.identifier_uris) or 'no URI'}, "
                        f"version {app.access_token_version or 1})")
        fixes.append(f"az ad app update --id {app.app_id} --identifier-uris {uri} "
                     "--requested-access-token-version 2")
    if app.group_claims not in ("SecurityGroup", "All"):
        problems.append(f"groupMembershipClaims is {app.group_claims}")
        fixes.append(f"az ad app update --id {app.app_id} --set "
                     "groupMembershipClaims=SecurityGroup")
    if problems:
        rows.append(Check("Entra app settings", False, "; ".join(problems), "; ".join(fixes)))
    else:
        rows.append(Check("Entra app settings", True,
                          "redirect URI, App ID URI, v2 tokens and group claims as sign-in "
                          "needs"))
    subject = signin_subject(settings)
    if subject in app.federated_subjects:
        rows.append(Check("Entra app federated credential", True, subject))
    else:
        # The issuer is the cluster's, so an existing app's credential can only be added
        # once the cluster exists: this row informs, it does not stop a deploy.
        rows.append(Check(
            "Entra app federated credential", True,
            f"none for {subject} yet; the sign-in proxy cannot redeem codes without it",
            f"after mfhelm deploy: az ad app federated-credential create --id {app.app_id} "
            f"--parameters '{{\"name\": \"metaflow-signin\", \"issuer\": \"<output "
            f"aksOidcIssuerUrl>\", \"subject\": \"{subject}\", \"audiences\": "
            "[\"api://AzureADTokenExchange\"]}'"))
    return rows


def _guard(name: str, fn: Callable[[], list[Check]]) -> list[Check]:
    """One failed query becomes one failed row, so the other checks still run."""
    try:
        return fn()
    except MfhelmError as exc:
        return [Check(name, False, str(exc), "fix the cause above and run `mfhelm doctor` again")]


def run_preflight(
    settings: Settings,
    *,
    credential: TokenCredential | None = None,
    base_url: str | None = None,
    subscription_id: str | None = None,
    graph_url: str | None = None,
) -> list[Check]:
    """Every pre-deployment check, in the order a user should fix them, then
    the largest pod each pool takes (rows that inform, never fail)."""
    checks = [check_helm()]
    checks += _azure_checks(settings, credential, base_url, subscription_id, graph_url)
    return checks + pool_size_checks(settings)


def pool_size_checks(settings: Settings) -> list[Check]:
    """What one node of each pool leaves a pod: a step asking for more stays
    Pending on AKS forever, so say it before anyone writes @resources(cpu=4)."""
    from mfhelm.sizing import largest_step

    return [
        Check(f"{pool.name} pool", True,
              largest_step(pool.vm_size, "step" if pool.steps else "pod"),
              f"bigger steps: a larger {pool.size_setting}" if pool.steps else "")
        for pool in node_pools(settings)
    ]


def _azure_checks(
    settings: Settings,
    credential: TokenCredential | None,
    base_url: str | None,
    subscription_id: str | None,
    graph_url: str | None = None,
) -> list[Check]:
    from mfhelm.azure import preflight as pf
    from mfhelm.azure.credentials import ARM_SCOPE, get_credential, resolve_subscription_id

    checks: list[Check] = []
    try:
        sub = resolve_subscription_id(subscription_id)
    except MfhelmError as exc:
        checks.append(Check(
            "Azure subscription", False, str(exc),
            "az login && az account set -s <subscription>, or set AZURE_SUBSCRIPTION_ID",
        ))
        return checks
    checks.append(Check("Azure subscription", True, sub))

    cred = get_credential(credential)
    try:
        cred.get_token(ARM_SCOPE)
    except Exception as exc:  # any credential in the chain may raise its own type
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        checks.append(Check("Azure login", False, first, "az login"))
        return checks
    checks.append(Check("Azure login", True, "got an Azure Resource Manager token"))

    loc = settings.location
    namespaces = pf.REQUIRED_PROVIDERS + (
        (pf.REGISTRY_PROVIDER,) if settings.registry.enabled else ())
    providers = partial(pf.provider_states, sub, namespaces, credential=cred,
                        base_url=base_url)
    vm_skus = partial(pf.vm_skus, sub, loc, credential=cred, base_url=base_url)
    usage = partial(pf.compute_usage, sub, loc, credential=cred, base_url=base_url)
    pg_caps = partial(pf.postgres_capabilities, sub, loc, credential=cred, base_url=base_url)

    checks += _guard("resource providers", lambda: [_provider_check(providers())])
    skus: dict[str, VmSku] = {}

    def sku_rows() -> list[Check]:
        skus.update(vm_skus())
        return _sku_checks(settings, skus)

    checks += _guard(f"VM sizes in {loc}", sku_rows)
    if skus:
        checks += _guard("vCPU quota", lambda: _quota_checks(settings, skus, usage()))
    checks += _guard(
        "PostgreSQL Flexible Server", lambda: _postgres_checks(settings, pg_caps())
    )
    if settings.access.enabled:
        checks += _guard(SIGNIN_APP, lambda: _with_graph(settings, cred, graph_url))
    if settings.image.reference:
        from mfhelm.image import image_check

        checks.append(image_check(settings.image.reference, cred))
    return checks


def _with_graph(settings: Settings, credential: TokenCredential,
                graph_url: str | None) -> list[Check]:
    from mfhelm.azure.entra import Graph

    graph = Graph(credential, graph_url)
    try:
        return access_checks(settings, graph)
    finally:
        graph.close()


def render_table(checks: list[Check]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="mfhelm doctor", show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result")
    table.add_column("fix")
    for c in checks:
        mark = "[green]ok[/green]" if c.ok else "[bold red]FAIL[/bold red]"
        # Text, not markup: fixes quote settings sections like "[aks]".
        table.add_row(mark, Text(c.name), Text(c.detail), Text(c.fix))
    return table
