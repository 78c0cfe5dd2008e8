"""`mfhelm deploy [--what-if|--build-only]`: drive `bicep/main.bicep` with the Azure CLI.

Parameters come from `mfhelm.toml`. The PostgreSQL administrator password is
generated on the first deploy and read back from Key Vault afterwards, so a
re-deploy never resets it. It travels to `az` through a pipe (`@/dev/fd/N`):
never in argv, in the environment, in a file, or on the terminal. Likewise the
current node count of each AKS pool is read before a re-deploy and passed in,
so the deploy keeps the size the cluster autoscaler chose.

`make bicep-build|bicep-whatif|bicep-deploy` call `mfhelm deploy`; the module
entry point stays for scripts: python -m mfhelm.bicep_deploy build|whatif|deploy
[--settings PATH] [--skip-preflight]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from mfhelm import proc as children
from mfhelm import settings as settings_mod
from mfhelm.bicep_errors import POSTGRES_INTERNAL, classify, explain
from mfhelm.errors import Interrupted, MfhelmError, redact, remember_secret
from mfhelm.proc import TimedOut
from mfhelm.settings import ORG_PREFIX_RE, Settings

PARAMETERS_SCHEMA = (
    "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#"
)


def find_template() -> Path:
    """bicep/main.bicep: the copy packaged in the wheel (mfhelm/bicep), else the repo's."""
    here = Path(__file__).resolve().parent
    candidates = [here / "bicep" / "main.bicep", here.parent / "bicep" / "main.bicep"]
    for path in candidates:
        if path.is_file():
            return path
    return candidates[-1]


TEMPLATE = find_template()
PASSWORD_PARAMETER = "postgresAdminPassword"
# The nested deployment name of the Key Vault module in main.bicep; its outputs
# locate the password secret when the subscription deployment has none yet
# (an earlier run that failed after the vault was written).
KEYVAULT_MODULE_DEPLOYMENT = "mfhelm-keyvault"
# Likewise the AKS module's nested deployment locates the cluster whose pool
# sizes a re-deploy must keep.
AKS_MODULE_DEPLOYMENT = "mfhelm-aks"
POOL_COUNTS_PARAMETER = "existingPoolCounts"
# The deployment output (and Key Vault module output) naming the password
# secret. Not "...PasswordSecretName": Bicep's outputs-should-not-contain-secrets
# linter rule flags any output whose name contains "password".
SECRET_NAME_OUTPUT = "postgresAdminSecretName"
POSTGRES_RETRY_ATTEMPTS = 3
POSTGRES_RETRY_WAIT_SECONDS = 180.0
# Bounds of each az run (az itself waits on Azure without end): a query (show,
# list, account), `az bicep build` (which may first download Bicep), a
# what-if, and the deployment (AKS and PostgreSQL take 10-20 minutes).
AZ_QUERY_TIMEOUT = 300.0
AZ_BUILD_TIMEOUT = 600.0
AZ_WHATIF_TIMEOUT = 1800.0
AZ_DEPLOY_TIMEOUT = 7200.0
_GUID_RE = re.compile(r"\A[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
_PASSWORD_ALPHABET = string.ascii_letters + string.digits + "_.~"

Preflight = Callable[[Settings], Any]
Sleep = Callable[[float], None]


# --- pure parts -----------------------------------------------------------------------


def build_parameters(
    settings: Settings,
    deployer_principal_id: str,
    deployer_principal_type: str = "User",
    pool_counts: dict[str, int] | None = None,
    tls_vault_id: str = "",
) -> dict[str, Any]:
    """The non-secret ARM parameters document for main.bicep.

    `pool_counts` is the current node count of each AKS pool that exists
    (empty on the first deploy): main.bicep sends it back as the pools'
    `count`, so a re-deploy does not reset what the autoscaler chose.
    `tls_vault_id` is the resource id of the vault holding
    [access] tls_certificate (`key_vault_for_certificate`), when one is set.
    """
    # Settings are validated on load; checked again because a bad prefix must
    # never reach Azure, whoever built the Settings object.
    if not ORG_PREFIX_RE.fullmatch(settings.org_prefix):
        raise MfhelmError(
            f"org_prefix {settings.org_prefix!r}: must be 2-8 characters, lowercase letters and "
            "digits, starting with a letter"
        )
    if not _GUID_RE.fullmatch(deployer_principal_id):
        raise MfhelmError(
            f"deployer principal id {deployer_principal_id!r} is not an object ID (GUID); "
            "check `az ad signed-in-user show --query id`"
        )
    if deployer_principal_type not in ("User", "Group", "ServicePrincipal"):
        raise MfhelmError(f"unknown deployer principal type {deployer_principal_type!r}")
    access = settings.access
    if access.tls_certificate and not tls_vault_id:
        raise MfhelmError("[access] tls_certificate is set but its Key Vault was not looked up")
    aks, pg = settings.aks, settings.postgres
    values: dict[str, Any] = {
        "orgPrefix": settings.org_prefix,
        "location": settings.location,
        "resourceGroupName": settings.resource_group_name,
        "deployArgo": settings.deploy_argo,
        "deployAirflow": settings.deploy_airflow,
        "kubernetesVersion": aks.kubernetes_version,
        "systemVmSize": aks.system_vm_size,
        "systemMinCount": aks.system_min_count,
        "systemMaxCount": aks.system_max_count,
        "servicesVmSize": aks.services_vm_size,
        "servicesMinCount": aks.services_min_count,
        "servicesMaxCount": aks.services_max_count,
        "taskVmSize": aks.task_vm_size,
        "taskMinCount": aks.task_min_count,
        "taskMaxCount": aks.task_max_count,
        # The optional pools (issue 20): sent even when off, so that the template
        # and mfhelm.toml never disagree about a default.
        "gpuPoolEnabled": aks.gpu_enabled,
        "gpuVmSize": aks.gpu_vm_size,
        "gpuMinCount": aks.gpu_min_count,
        "gpuMaxCount": aks.gpu_max_count,
        "spotPoolEnabled": aks.spot_enabled,
        "spotVmSize": aks.spot_vm_size,
        "spotMinCount": aks.spot_min_count,
        "spotMaxCount": aks.spot_max_count,
        # The flow image's registry, on unless [registry] enabled = false.
        "registryEnabled": settings.registry.enabled,
        "postgresVersion": pg.version,
        "postgresTier": pg.tier,
        "postgresSku": pg.sku,
        "postgresStorageGB": pg.storage_gb,
        "deployerPrincipalId": deployer_principal_id.lower(),
        "deployerPrincipalType": deployer_principal_type,
        "serviceNamespace": settings.helm.namespace,
        "flowNamespace": settings.helm.flow_namespace,
        POOL_COUNTS_PARAMETER: dict(pool_counts or {}),
        # The HTTPS entry point and sign-in (issue 18); all empty: access off.
        "accessHost": access.host,
        "accessClientId": access.client_id,
        "accessTlsCertificateId": access.tls_certificate,
        "accessTlsVaultId": tls_vault_id if access.tls_certificate else "",
        # The sign-in proxy's ServiceAccount is <release>-signin (its federated credential).
        "releaseName": settings.helm.release,
    }
    return {
        "$schema": PARAMETERS_SCHEMA,
        "contentVersion": "1.0.0.0",
        "parameters": {name: {"value": v} for name, v in values.items()},
    }


def with_password(parameters: dict[str, Any], password: str) -> dict[str, Any]:
    """A copy of the parameters document with the secure parameter added."""
    doc = dict(parameters)
    doc["parameters"] = {**parameters["parameters"], PASSWORD_PARAMETER: {"value": password}}
    return doc


def generate_password(length: int = 32) -> str:
    """A Flexible Server admin password: all of upper, lower and digits, URL-safe symbols only."""
    while True:
        pw = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))
        if (
            any(c.islower() for c in pw)
            and any(c.isupper() for c in pw)
            and any(c.isdigit() for c in pw)
            and pw[0].isalpha()
        ):
            return pw


def build_command(template: Path = TEMPLATE) -> list[str]:
    return ["az", "bicep", "build", "--file", str(template), "--stdout"]


def _deployment_args(settings: Settings, template: Path, parameters_ref: str) -> list[str]:
    return [
        "--name", settings.deployment,
        "--location", settings.location,
        "--template-file", str(template),
        "--parameters", parameters_ref,
        "--only-show-errors",
    ]


def deploy_command(settings: Settings, parameters_ref: str, template: Path = TEMPLATE) -> list[str]:
    """`parameters_ref` is `@/dev/fd/N`: az reads the file once, when it expands `@` args."""
    return [
        "az", "deployment", "sub", "create",
        *_deployment_args(settings, template, parameters_ref),
        "--output", "json",
    ]


def whatif_command(settings: Settings, parameters_ref: str, template: Path = TEMPLATE) -> list[str]:
    args = _deployment_args(settings, template, parameters_ref)
    return ["az", "deployment", "sub", "what-if", *args]


# --- the Azure CLI --------------------------------------------------------------------


def require_az() -> str:
    az = shutil.which("az")
    if not az:
        raise MfhelmError(
            "the Azure CLI `az` is not on PATH: install it (https://aka.ms/azure-cli), "
            "run `az login`, then try again"
        )
    return az


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line.removeprefix("ERROR: ")
    return "no error output"


def run_az(
    args: Sequence[str],
    *,
    parameters: dict[str, Any] | None = None,
    capture: bool = True,
    timeout: float = AZ_QUERY_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run az (through mfhelm.proc: its own process group, stopped as a group
    after `timeout` seconds or on an interrupt); with `parameters`, the
    `@PARAMS` placeholder becomes a pipe holding them."""
    az = require_az()
    argv = [az, *args[1:]] if args and args[0] == "az" else [az, *args]
    what = "az " + " ".join(a for a in argv[1:4] if not a.startswith("-"))
    if parameters is None:
        return children.run(argv, capture=capture, timeout=timeout, what=what)
    read_fd, write_fd = os.pipe()
    payload = json.dumps(parameters).encode()

    def feed() -> None:
        # A thread, so a document larger than the pipe buffer cannot deadlock.
        try:
            with contextlib.suppress(BrokenPipeError):
                view = memoryview(payload)
                while view:
                    view = view[os.write(write_fd, view):]
        finally:
            os.close(write_fd)

    argv = [a.replace("@PARAMS", f"@/dev/fd/{read_fd}") for a in argv]
    writer = threading.Thread(target=feed, daemon=True)
    fds = {"read": True, "write": True}

    def started() -> None:
        # az holds the read end now; once it exits, the writer meets EPIPE.
        os.close(read_fd)
        fds["read"] = False
        fds["write"] = False
        writer.start()

    try:
        return children.run(argv, capture=capture, timeout=timeout, what=what,
                            pass_fds=(read_fd,), started=started)
    finally:
        if fds["read"]:
            os.close(read_fd)
        if fds["write"]:
            os.close(write_fd)
        if writer.is_alive():
            writer.join(5)


def _az_json(args: Sequence[str], what: str) -> Any:
    proc = run_az(args)
    if proc.returncode != 0:
        raise MfhelmError(f"{what} failed: {_first_line(proc.stderr)}")
    try:
        return json.loads(proc.stdout or "null")
    except ValueError:
        raise MfhelmError(f"{what}: az printed something that is not JSON") from None


def signed_in_principal() -> tuple[str, str]:
    """Object ID and ARM principal type of whoever `az` is logged in as."""
    account = _az_json(["az", "account", "show", "--output", "json"], "az account show")
    if not isinstance(account, dict):
        raise MfhelmError("not logged in to Azure: run `az login`")
    user = account.get("user") or {}
    if user.get("type") == "servicePrincipal":
        args = ["az", "ad", "sp", "show", "--id", str(user.get("name", "")), "--output", "json"]
        sp = _az_json(args, "az ad sp show")
        return str(sp.get("id", "")), "ServicePrincipal"
    args = ["az", "ad", "signed-in-user", "show", "--output", "json"]
    me = _az_json(args, "az ad signed-in-user show")
    return str(me.get("id", "")), "User"


def _not_found(stderr: str) -> bool:
    s = stderr.lower()
    return any(k in s for k in ("notfound", "not found", "could not be found", "does not exist"))


def _outputs_of(args: Sequence[str]) -> dict[str, Any] | None:
    proc = run_az(args)
    if proc.returncode != 0:
        if _not_found(proc.stderr):
            return None
        raise MfhelmError(f"reading the previous deployment failed: {_first_line(proc.stderr)}")
    try:
        outputs = json.loads(proc.stdout or "null")
    except ValueError:
        return None
    return outputs if isinstance(outputs, dict) else None


def _value(outputs: dict[str, Any], name: str) -> str:
    entry = outputs.get(name)
    return str(entry.get("value") or "") if isinstance(entry, dict) else ""


def previous_outputs(settings: Settings) -> dict[str, Any] | None:
    """Outputs of the last subscription deployment, or None before the first success."""
    return _outputs_of([
        "az", "deployment", "sub", "show", "--name", settings.deployment,
        "--query", "properties.outputs", "--output", "json",
    ])


def module_outputs(settings: Settings, module_deployment: str) -> dict[str, Any] | None:
    """Outputs of one module's nested deployment (they survive a failed overall run)."""
    return _outputs_of([
        "az", "deployment", "group", "show",
        "--resource-group", settings.resource_group_name, "--name", module_deployment,
        "--query", "properties.outputs", "--output", "json",
    ])


def password_secret_location(
    settings: Settings, previous: dict[str, Any] | None
) -> tuple[str, str] | None:
    """(vault, secret name) from the last deployment's outputs, if it got that far."""
    if previous and _value(previous, "keyVaultName") and _value(previous, SECRET_NAME_OUTPUT):
        return _value(previous, "keyVaultName"), _value(previous, SECRET_NAME_OUTPUT)
    module = module_outputs(settings, KEYVAULT_MODULE_DEPLOYMENT)
    if module and _value(module, "vaultName") and _value(module, SECRET_NAME_OUTPUT):
        return _value(module, "vaultName"), _value(module, SECRET_NAME_OUTPUT)
    return None


def existing_password(settings: Settings, previous: dict[str, Any] | None) -> str | None:
    """The password kept in Key Vault by an earlier deploy, or None when there is none."""
    where = password_secret_location(settings, previous)
    if where is None:
        return None
    vault, name = where
    proc = run_az([
        "az", "keyvault", "secret", "show", "--vault-name", vault, "--name", name,
        "--query", "value", "--output", "tsv",
    ])
    if proc.returncode != 0:
        if "secretnotfound" in proc.stderr.lower().replace(" ", ""):
            return None
        # Generating a new password here would silently reset the database's.
        raise MfhelmError(
            f"could not read secret {name} from Key Vault {vault} ({_first_line(proc.stderr)}); "
            "the deploying identity needs the 'Key Vault Secrets User' role on it"
        )
    value = proc.stdout.rstrip("\r\n")
    return value or None


def aks_cluster_location(
    settings: Settings, previous: dict[str, Any] | None
) -> tuple[str, str] | None:
    """(resource group, cluster name) of the stack's AKS cluster, if a deploy created it."""
    if previous and _value(previous, "resourceGroupName") and _value(previous, "aksClusterName"):
        return _value(previous, "resourceGroupName"), _value(previous, "aksClusterName")
    module = module_outputs(settings, AKS_MODULE_DEPLOYMENT)
    if module and _value(module, "clusterName"):
        return settings.resource_group_name, _value(module, "clusterName")
    return None


def current_pool_counts(settings: Settings, previous: dict[str, Any] | None) -> dict[str, int]:
    """Node count of each pool of the existing cluster; empty when there is no cluster yet."""
    where = aks_cluster_location(settings, previous)
    if where is None:
        return {}
    group, cluster = where
    proc = run_az([
        "az", "aks", "nodepool", "list", "--resource-group", group, "--cluster-name", cluster,
        "--query", "[].{name: name, count: count}", "--output", "json",
    ])
    if proc.returncode != 0:
        if _not_found(proc.stderr):
            return {}
        # Without the counts every pool would be sent its minimum, which can scale it down.
        raise MfhelmError(
            f"could not read the node pools of AKS cluster {cluster} in {group} "
            f"({_first_line(proc.stderr)}); a re-deploy needs their current size so it does "
            "not undo the cluster autoscaler"
        )
    try:
        pools = json.loads(proc.stdout or "[]")
    except ValueError:
        raise MfhelmError("az aks nodepool list: az printed something that is not JSON") from None
    counts: dict[str, int] = {}
    for pool in pools if isinstance(pools, list) else []:
        if not isinstance(pool, dict):
            continue
        name, count = pool.get("name"), pool.get("count")
        if isinstance(name, str) and isinstance(count, int) and not isinstance(count, bool):
            counts[name] = count
    return counts


def certificate_vault_name(certificate_id: str) -> str:
    """`https://<vault>.vault.azure.net/certificates/<name>[/<version>]` -> `<vault>`."""
    return certificate_id.split("/")[2].split(".")[0]


def key_vault_for_certificate(certificate_id: str) -> str:
    """Resource id of the vault holding [access] tls_certificate, in the current
    subscription. Refused (one line, before anything is deployed) when there is no such
    vault, or when it uses access policies: the add-on's read right is an Azure role
    assignment, which such a vault ignores, and the entry point would serve no
    certificate."""
    vault = certificate_vault_name(certificate_id)
    proc = run_az([
        "az", "keyvault", "show", "--name", vault,
        "--query", "{id: id, rbac: properties.enableRbacAuthorization}", "--output", "json",
    ])
    if proc.returncode != 0:
        if _not_found(proc.stderr):
            raise MfhelmError(
                f"Key Vault {vault} ([access] tls_certificate) is not in the current "
                "subscription: check the certificate id, or `az account set -s` the "
                "subscription that holds the vault")
        raise MfhelmError(f"could not read Key Vault {vault} ([access] tls_certificate): "
                          f"{_first_line(proc.stderr)}")
    try:
        found = json.loads(proc.stdout or "null")
    except ValueError:
        raise MfhelmError("az keyvault show: az printed something that is not JSON") from None
    vault_id = str(found.get("id") or "") if isinstance(found, dict) else ""
    if not vault_id.lower().endswith(f"/providers/microsoft.keyvault/vaults/{vault}"):
        raise MfhelmError(f"az keyvault show --name {vault}: no vault resource id in its answer")
    if found.get("rbac") is not True:
        raise MfhelmError(
            f"Key Vault {vault} ([access] tls_certificate) uses access policies; the "
            "application-routing add-on is granted the certificate by an Azure role: "
            f"switch the vault to Azure RBAC (`az keyvault update --name {vault} "
            "--enable-rbac-authorization true`), or use [access] tls_secret instead")
    return vault_id


# --- commands ---------------------------------------------------------------------------


def load_preflight(err: TextIO | None = None) -> Preflight | None:
    """`mfhelm.doctor.run_preflight`, or None (with a note) when it is not available."""
    err = err or sys.stderr
    try:
        doctor = importlib.import_module("mfhelm.doctor")
    except ImportError:
        print("note: mfhelm.doctor is not available; skipping the preflight checks", file=err)
        return None
    fn = getattr(doctor, "run_preflight", None)
    if not callable(fn):
        print("note: mfhelm.doctor has no run_preflight; skipping the preflight checks", file=err)
        return None
    return fn


def run_preflight(settings: Settings, preflight: Preflight | None, err: TextIO) -> None:
    if preflight is None:
        return
    result = preflight(settings)
    checks = result if isinstance(result, list) else []
    failed = [c for c in checks if getattr(c, "ok", True) is False]
    for c in failed:
        fix = getattr(c, "fix", "")
        detail = getattr(c, "detail", "")
        print(f"preflight: {getattr(c, 'name', 'check')}: {detail}"
              + (f" (fix: {fix})" if fix else ""), file=err)
    if failed or result is False:
        raise MfhelmError(
            "preflight checks failed (listed above); fix them, or re-run with --skip-preflight"
        )


def prepare(settings: Settings, err: TextIO) -> dict[str, Any]:
    """Parameters including the password: reused from Key Vault, else freshly generated."""
    principal, principal_type = signed_in_principal()
    previous = previous_outputs(settings)
    counts = current_pool_counts(settings, previous)
    if counts:
        sizes = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
        print(f"keeping the current AKS pool sizes ({sizes})", file=err)
    vault_id = ""
    if settings.access.tls_certificate:
        vault_id = key_vault_for_certificate(settings.access.tls_certificate)
    parameters = build_parameters(settings, principal, principal_type, counts, vault_id)
    password = existing_password(settings, previous)
    remember_secret(password)
    if password:
        print("reusing the PostgreSQL administrator password kept in Key Vault", file=err)
    else:
        password = generate_password()
        remember_secret(password)
        print("generated a new PostgreSQL administrator password (kept only in Key Vault)",
              file=err)
    return with_password(parameters, password)


def deploy(
    settings: Settings,
    *,
    template: Path = TEMPLATE,
    preflight: Preflight | None = None,
    sleep: Sleep = time.sleep,
    attempts: int = POSTGRES_RETRY_ATTEMPTS,
    retry_wait: float = POSTGRES_RETRY_WAIT_SECONDS,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> dict[str, Any]:
    """Deploy main.bicep; returns the deployment outputs. Raises MfhelmError on failure."""
    out, err = out or sys.stdout, err or sys.stderr
    require_az()
    run_preflight(settings, preflight, err)
    parameters = prepare(settings, err)
    command = deploy_command(settings, "@PARAMS", template)
    for attempt in range(1, attempts + 1):
        print(
            f"deploying {settings.deployment} to {settings.location} "
            f"(attempt {attempt} of {attempts}; AKS and PostgreSQL take 10-20 minutes)",
            file=err,
        )
        proc = _create(settings, command, parameters)
        if proc.returncode == 0:
            return _report_success(proc.stdout, settings, out)
        failure = classify(proc.stderr)
        if failure and failure.kind == POSTGRES_INTERNAL and attempt < attempts:
            print(
                "PostgreSQL answered InternalServerError (transient on first create); "
                f"retrying in {retry_wait:.0f}s",
                file=err,
            )
            sleep(retry_wait)
            continue
        if failure:
            raise MfhelmError(explain(failure))
        # az has quoted secure parameters back in its failure text.
        print(redact(proc.stderr.rstrip()), file=err)
        raise MfhelmError(
            f"deployment {settings.deployment} failed (error above); see "
            f"`az deployment operation sub list --name {settings.deployment}`"
        )
    raise AssertionError("unreachable")  # the loop returns or raises


def _create(settings: Settings, command: list[str],
            parameters: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`az deployment sub create`, bounded by AZ_DEPLOY_TIMEOUT. az only
    follows the deployment: stopped (the bound, a signal), it leaves the
    deployment running in Azure, and says so."""
    follow = f"`az deployment sub show --name {settings.deployment}`"
    try:
        return run_az(command, parameters=parameters, timeout=AZ_DEPLOY_TIMEOUT)
    except TimedOut as exc:
        raise MfhelmError(f"{exc}; the deployment {settings.deployment} may still be running "
                          f"in Azure: follow it with {follow}, then run mfhelm deploy "
                          "again") from None
    except Interrupted as exc:
        raise Interrupted(*exc.args[:1], f"az was stopped, but the deployment "
                          f"{settings.deployment} may go on in Azure: follow it with {follow}, "
                          "then run mfhelm deploy again") from None


def _report_success(stdout: str, settings: Settings, out: TextIO) -> dict[str, Any]:
    try:
        doc = json.loads(stdout or "{}")
    except ValueError:
        doc = {}
    outputs = (doc.get("properties") or {}).get("outputs") or {}
    print(f"deployed {settings.deployment}:", file=out)
    for name in ("resourceGroupName", "aksClusterName", "postgresFqdn", "storageAccountName",
                 "keyVaultName"):
        if name in outputs:
            print(f"  {name}: {_value(outputs, name)}", file=out)
    print("next: mfhelm install", file=out)
    return {k: v.get("value") for k, v in outputs.items() if isinstance(v, dict)}


def whatif(settings: Settings, *, template: Path = TEMPLATE, err: TextIO | None = None) -> None:
    err = err or sys.stderr
    require_az()
    parameters = prepare(settings, err)
    # Captured, not passed through: what az prints goes through redact first
    # (its error text can quote the parameters, the password among them).
    proc = run_az(whatif_command(settings, "@PARAMS", template), parameters=parameters,
                  timeout=AZ_WHATIF_TIMEOUT)
    if proc.stdout:
        print(redact(proc.stdout.rstrip("\n")), file=sys.stdout)
    if proc.returncode != 0:
        if proc.stderr.strip():
            print(redact(proc.stderr.rstrip()), file=err)
        raise MfhelmError("az deployment sub what-if failed (error above)")


def build(*, template: Path = TEMPLATE) -> None:
    require_az()
    proc = run_az(build_command(template), capture=False, timeout=AZ_BUILD_TIMEOUT)
    if proc.returncode != 0:
        raise MfhelmError("az bicep build failed (errors above); `az bicep install` if missing")


def _check_template(template: Path) -> None:
    if not template.is_file():
        raise MfhelmError(f"{template} not found: reinstall mfhelm (the wheel carries "
                          "bicep/) or run it from its repository")


COMMANDS = ("build", "whatif", "deploy")


def run(
    command: str,
    settings_path: str | os.PathLike[str] | None = None,
    *,
    skip_preflight: bool = False,
    preflight_loader: Callable[[TextIO | None], Preflight | None] = load_preflight,
    sleep: Sleep = time.sleep,
) -> None:
    """One of COMMANDS, as `mfhelm deploy` and the module entry point run it.

    Everything local (the template, the settings, `az` on PATH) is checked
    before the first call to Azure. Raises MfhelmError.
    """
    if command not in COMMANDS:
        raise MfhelmError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
    template = find_template()
    _check_template(template)
    if command == "build":
        build(template=template)
        return
    settings = settings_mod.load(settings_path)
    require_az()
    if command == "whatif":
        whatif(settings, template=template)
    else:
        preflight = None if skip_preflight else preflight_loader(None)
        deploy(settings, template=template, preflight=preflight, sleep=sleep)


def main(
    argv: Sequence[str] | None = None,
    *,
    preflight_loader: Callable[[TextIO | None], Preflight | None] = load_preflight,
    sleep: Sleep = time.sleep,
) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfhelm.bicep_deploy")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--settings", default=None, help="path to mfhelm.toml")
    parser.add_argument("--skip-preflight", action="store_true",
                        help="deploy without running the `mfhelm doctor` checks")
    args = parser.parse_args(argv)
    try:
        run(args.command, args.settings, skip_preflight=args.skip_preflight,
            preflight_loader=preflight_loader, sleep=sleep)
    except MfhelmError as exc:
        print(f"mfhelm: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
