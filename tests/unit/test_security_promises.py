"""Security switches: a user value that weakens one of the stack's security
promises (mfhelm.promises) is refused in one line naming the layer, the key,
the promise and the override; `--allow-override KEY` lets it through. And a
key the stack publishes in the Metaflow config cannot be replaced through
`metaflowConfig.extra`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import fake_arm
import pytest
import yaml

from mfhelm import promises, settings, uservalues
from mfhelm import values as values_mod
from mfhelm.errors import MfhelmError
from mfhelm.helm import find_chart
from mfhelm.uservalues import (
    AZURE_PROTECTED,
    LOCAL_PROTECTED,
    PUBLISHED_ARGO_CONFIG,
    PUBLISHED_CONFIG,
    PUBLISHED_EVENTS_CONFIG,
    UserValues,
)

ROOT = Path(__file__).resolve().parents[2]


def azure_values() -> dict[str, Any]:
    outputs = fake_arm.sample_outputs() | {"deployAirflow": True,
                                           "airflowLogsContainerName": "airflow-logs"}
    s = settings.parse({"org_prefix": "acme", "location": "westeurope"})
    return values_mod.render_values(outputs, s)


def local_values() -> dict[str, Any]:
    return values_mod.local_values(argo=True, airflow=True, flow_namespace="mf-flows")


def base_for(profile: str) -> tuple[dict[str, Any], dict[str, str]]:
    return (azure_values(), AZURE_PROTECTED) if profile == "azure" else (
        local_values(), LOCAL_PROTECTED)


# (the --set, the key --allow-override names, where the weak value sits, the promise)
SWITCHES = [
    # The Argo server's auth mode, by every key that reaches its --auth-mode.
    ("argo-workflows.server.authModes={server}", "argo-workflows.server.authModes",
     "argo-workflows.server.authModes[0]", promises.ARGO_CLIENT_AUTH),
    ("argo-workflows.server.authModes={client,hybrid}", "argo-workflows.server.authModes",
     "argo-workflows.server.authModes[1]", promises.ARGO_CLIENT_AUTH),
    ("argo-workflows.server.authModes={sso}", "argo-workflows.server.authModes",
     "argo-workflows.server.authModes[0]", promises.ARGO_CLIENT_AUTH),
    ("argo-workflows.server.authMode=server", "argo-workflows.server.authMode",
     "argo-workflows.server.authMode", promises.ARGO_CLIENT_AUTH),
    ("argo-workflows.server.extraArgs={--auth-mode=server}", "argo-workflows.server.extraArgs",
     "argo-workflows.server.extraArgs[0]", promises.ARGO_CLIENT_AUTH),
    ("argo-workflows.server.extraArgs={--x-frame-options=DENY,--auth-mode,server}",
     "argo-workflows.server.extraArgs", "argo-workflows.server.extraArgs[1]",
     promises.ARGO_CLIENT_AUTH),
    ("argo-workflows.server.extraEnv[0].name=ARGO_AUTH_MODE,"
     "argo-workflows.server.extraEnv[0].value=server", "argo-workflows.server.extraEnv",
     "argo-workflows.server.extraEnv[0]", promises.ARGO_CLIENT_AUTH),
    # Nothing cluster-wide.
    ("argo-workflows.singleNamespace=false", "argo-workflows.singleNamespace",
     "argo-workflows.singleNamespace", promises.NAMESPACED),
    # null falls back to argo-helm's default, false.
    ("argo-workflows.singleNamespace=null", "argo-workflows.singleNamespace",
     "argo-workflows.singleNamespace", promises.NAMESPACED),
    ("argo-workflows.createAggregateRoles=true", "argo-workflows.createAggregateRoles",
     "argo-workflows.createAggregateRoles", promises.NAMESPACED),
    ("argo-workflows.controller.clusterWorkflowTemplates.enabled=true",
     "argo-workflows.controller.clusterWorkflowTemplates.enabled",
     "argo-workflows.controller.clusterWorkflowTemplates.enabled", promises.NAMESPACED),
    ("argo-workflows.server.clusterWorkflowTemplates.enabled=true",
     "argo-workflows.server.clusterWorkflowTemplates.enabled",
     "argo-workflows.server.clusterWorkflowTemplates.enabled", promises.NAMESPACED),
    ("argo-workflows.controller.extraArgs={--namespaced=false}",
     "argo-workflows.controller.extraArgs", "argo-workflows.controller.extraArgs[0]",
     promises.NAMESPACED),
    ("airflow.multiNamespaceMode=true", "airflow.multiNamespaceMode",
     "airflow.multiNamespaceMode", promises.NAMESPACED),
    ("argo-workflows.extraObjects[0].kind=ClusterRoleBinding",
     "argo-workflows.extraObjects", "argo-workflows.extraObjects[0].kind", promises.NAMESPACED),
    ("airflow.allowPodLaunching=true", "airflow.allowPodLaunching",
     "airflow.allowPodLaunching", promises.AIRFLOW_PODS),
    ("networkPolicy.enabled=false", "networkPolicy.enabled", "networkPolicy.enabled",
     promises.NETWORK),
    ("networkPolicy.enabled=null", "networkPolicy.enabled", "networkPolicy.enabled",
     promises.NETWORK),
    # Security contexts: ours and the subcharts', pod and container level.
    ("podSecurityContext.runAsUser=0", "podSecurityContext", "podSecurityContext.runAsUser",
     promises.NON_ROOT),
    ("podSecurityContext=null", "podSecurityContext", "podSecurityContext", promises.NON_ROOT),
    ("containerSecurityContext.privileged=true", "containerSecurityContext",
     "containerSecurityContext.privileged", promises.NON_ROOT),
    ("containerSecurityContext.capabilities=null", "containerSecurityContext",
     "containerSecurityContext.capabilities", promises.NON_ROOT),
    ("ui.static.podSecurityContext.runAsNonRoot=false", "ui.static.podSecurityContext",
     "ui.static.podSecurityContext.runAsNonRoot", promises.NON_ROOT),
    ("metadata.migrations.securityContext.privileged=true",
     "metadata.migrations.securityContext", "metadata.migrations.securityContext.privileged",
     promises.NON_ROOT),
    ("local.postgres.podSecurityContext.runAsUser=0", "local.postgres.podSecurityContext",
     "local.postgres.podSecurityContext.runAsUser", promises.NON_ROOT),
    ("argo-workflows.controller.podSecurityContext.runAsUser=0",
     "argo-workflows.controller.podSecurityContext",
     "argo-workflows.controller.podSecurityContext.runAsUser", promises.NON_ROOT),
    ("argo-workflows.server.securityContext.allowPrivilegeEscalation=true",
     "argo-workflows.server.securityContext",
     "argo-workflows.server.securityContext.allowPrivilegeEscalation", promises.NON_ROOT),
    ("argo-workflows.executor.securityContext.privileged=true",
     "argo-workflows.executor.securityContext",
     "argo-workflows.executor.securityContext.privileged", promises.NON_ROOT),
    ("argo-events.controller.containerSecurityContext.capabilities.add={SYS_ADMIN}",
     "argo-events.controller.containerSecurityContext",
     "argo-events.controller.containerSecurityContext.capabilities.add", promises.NON_ROOT),
    ("argo-events.global.securityContext.runAsNonRoot=null",
     "argo-events.global.securityContext", "argo-events.global.securityContext.runAsNonRoot",
     promises.NON_ROOT),
    ("airflow.uid=0", "airflow.uid", "airflow.uid", promises.NON_ROOT),
    ("airflow.securityContext.runAsUser=0", "airflow.securityContext",
     "airflow.securityContext.runAsUser", promises.NON_ROOT),
    ("airflow.securityContexts.pod.runAsUser=0", "airflow.securityContexts.pod",
     "airflow.securityContexts.pod.runAsUser", promises.NON_ROOT),
    ("airflow.securityContexts.containers.allowPrivilegeEscalation=true",
     "airflow.securityContexts.containers",
     "airflow.securityContexts.containers.allowPrivilegeEscalation", promises.NON_ROOT),
    ("airflow.scheduler.securityContexts.container.privileged=true",
     "airflow.scheduler.securityContexts.container",
     "airflow.scheduler.securityContexts.container.privileged", promises.NON_ROOT),
    ("airflow.webserver.securityContexts.pod.seccompProfile.type=Unconfined",
     "airflow.webserver.securityContexts.pod",
     "airflow.webserver.securityContexts.pod.seccompProfile.type", promises.NON_ROOT),
    ("airflow.scheduler.extraContainers[0].name=x,"
     "airflow.scheduler.extraContainers[0].securityContext.privileged=true",
     "airflow.scheduler.extraContainers[0].securityContext",
     "airflow.scheduler.extraContainers[0].securityContext.privileged", promises.NON_ROOT),
    # The node's filesystem and namespaces.
    ("airflow.volumes[0].name=h,airflow.volumes[0].hostPath.path=/", "airflow.volumes",
     "airflow.volumes[0].hostPath", promises.NO_HOST),
    ("airflow.scheduler.extraVolumes[0].name=h,airflow.scheduler.extraVolumes[0].hostPath.path=/",
     "airflow.scheduler.extraVolumes", "airflow.scheduler.extraVolumes[0].hostPath",
     promises.NO_HOST),
    ("airflow.webserver.extraVolumes[0].hostPath.path=/var/run",
     "airflow.webserver.extraVolumes", "airflow.webserver.extraVolumes[0].hostPath",
     promises.NO_HOST),
    ("argo-workflows.controller.volumes[0].hostPath.path=/",
     "argo-workflows.controller.volumes", "argo-workflows.controller.volumes[0].hostPath",
     promises.NO_HOST),
    ("argo-workflows.extraObjects[0].kind=DaemonSet,"
     "argo-workflows.extraObjects[0].spec.template.spec.hostNetwork=true",
     "argo-workflows.extraObjects[0].spec.template.spec.hostNetwork",
     "argo-workflows.extraObjects[0].spec.template.spec.hostNetwork", promises.NO_HOST),
    ("argo-events.extraObjects[0].kind=Pod,argo-events.extraObjects[0].spec.hostPID=true",
     "argo-events.extraObjects[0].spec.hostPID", "argo-events.extraObjects[0].spec.hostPID",
     promises.NO_HOST),
    ("airflow.scheduler.extraContainers[0].ports[0].hostPort=8080",
     "airflow.scheduler.extraContainers[0].ports[0].hostPort",
     "airflow.scheduler.extraContainers[0].ports[0].hostPort", promises.NO_HOST),
]

AZURE_ONLY = [
    ("database.sslMode=disable", "database.sslMode", "database.sslMode", promises.DB_TLS),
    ("database.sslMode=prefer", "database.sslMode", "database.sslMode", promises.DB_TLS),
    ("metadata.extraEnv[0].name=MF_METADATA_DB_SSL_MODE,metadata.extraEnv[0].value=disable",
     "metadata.extraEnv", "metadata.extraEnv[0]", promises.DB_TLS),
    ("ui.backend.extraEnv[0].name=MF_METADATA_DB_SSL_MODE,ui.backend.extraEnv[0].value=allow",
     "ui.backend.extraEnv", "ui.backend.extraEnv[0]", promises.DB_TLS),
]

CASES = ([pytest.param("azure", *c, id=f"azure:{c[0]}") for c in SWITCHES + AZURE_ONLY]
         + [pytest.param("local", *c, id=f"local:{c[0]}") for c in SWITCHES])


@pytest.mark.parametrize(("profile", "expr", "key", "detail", "promise"), CASES)
def test_each_switch_is_refused_naming_the_promise_and_can_be_overridden(
        profile: str, expr: str, key: str, detail: str, promise: str):
    base, protected = base_for(profile)
    with pytest.raises(MfhelmError) as err:
        UserValues.read(sets=[expr]).apply(base, protected)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"--set {expr} sets {detail} to "), msg
    assert f"which breaks the security promise that {promise}" in msg, msg
    assert msg.endswith(f"remove it, or pass --allow-override {key} if you mean it"), msg
    merged = UserValues.read(sets=[expr], allow=[key]).apply(base, protected)
    assert promises.weakenings(merged, profile)  # let through on purpose, still weak


def test_the_file_that_weakens_is_named_not_a_later_harmless_set(tmp_path: Path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("argo-workflows:\n  server:\n    authModes: [client, server]\n")
    with pytest.raises(MfhelmError, match=rf"^values file {re.escape(str(mine))} sets "
                       r"argo-workflows\.server\.authModes\[1\] to \"server\""):
        UserValues.read([mine], sets=["metadata.replicas=2"]).apply(azure_values(),
                                                                    AZURE_PROTECTED)


def test_several_weakenings_are_listed_in_the_one_line():
    with pytest.raises(MfhelmError) as err:
        UserValues.read(sets=["networkPolicy.enabled=false", "airflow.uid=0"]).apply(
            azure_values(), AZURE_PROTECTED)
    assert "(also airflow.uid)" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("profile", ["azure", "local"])
@pytest.mark.parametrize("expr", [
    # Stricter, or equal, is not weaker.
    "argo-workflows.server.authModes={client}",
    "argo-workflows.singleNamespace=true",
    "argo-workflows.createAggregateRoles=false",
    "networkPolicy.enabled=true",
    "airflow.allowPodLaunching=false",
    "podSecurityContext.fsGroup=2000",
    "podSecurityContext.runAsUser=20000",
    "argo-workflows.controller.extraArgs={--qps=50,--namespaced}",
    "argo-workflows.server.extraArgs={--auth-mode=client}",
    "airflow.volumes[0].name=cfg,airflow.volumes[0].configMap.name=x",
    "database.sslMode=verify-full,database.sslRootCertConfigMap=ca",
    # The documented exception: the migration container runs as uid 0.
    "metadata.migrations.securityContext.runAsUser=0",
    "metadata.migrations.securityContext.runAsNonRoot=false",
    # Upstream contexts default to empty: null there drops nothing.
    "airflow.securityContexts.pod=null",
])
def test_values_that_weaken_nothing_pass(profile: str, expr: str):
    base, protected = base_for(profile)
    UserValues.read(sets=[expr]).apply(base, protected)


def test_ssl_mode_is_a_switch_on_azure_only():
    UserValues.read(sets=["database.sslMode=disable"]).apply(local_values(), LOCAL_PROTECTED)
    with pytest.raises(MfhelmError, match="not a protected key or a security switch here"):
        UserValues.read(sets=["database.sslMode=disable"], allow=["database.sslMode"]).apply(
            local_values(), LOCAL_PROTECTED)


def test_only_what_a_user_layer_wrote_is_judged():
    base = azure_values()
    base["networkPolicy"] = {"enabled": False}  # not the user's: not theirs to answer for
    UserValues.read(sets=["metadata.replicas=2"]).apply(base, AZURE_PROTECTED)
    with pytest.raises(MfhelmError, match="sets networkPolicy.enabled to false"):
        UserValues.read(sets=["networkPolicy.enabled=false"]).apply(azure_values(),
                                                                    AZURE_PROTECTED)


def test_allow_override_names_a_switch_by_its_key():
    with pytest.raises(MfhelmError, match="not a protected key or a security switch here"):
        UserValues.read(sets=["a=1"], allow=["networkPolicy"]).apply(azure_values(),
                                                                     AZURE_PROTECTED)
    merged = UserValues.read(sets=["airflow.scheduler.extraVolumes[0].hostPath.path=/"],
                             allow=["airflow.scheduler.extraVolumes"]).apply(
        azure_values(), AZURE_PROTECTED)
    assert merged["airflow"]["scheduler"]["extraVolumes"] == [{"hostPath": {"path": "/"}}]


def test_mfhelm_own_values_over_the_chart_defaults_keep_every_promise():
    defaults = yaml.safe_load((find_chart() / "values.yaml").read_text())
    # values.yaml turns Airflow's own pod launching off in the RBAC change
    # (issue 17); until then the Airflow chart's default (on) shows here.
    expected = set() if "allowPodLaunching" in defaults["airflow"] else {
        "airflow.allowPodLaunching"}
    for profile, base in (("azure", azure_values()), ("local", local_values())):
        found = promises.weakenings(uservalues.coalesce(defaults, base), profile)
        assert {promises.key_text(w.key) for w in found} == expected, (profile, found)


def test_own_contexts_are_every_security_context_the_chart_sets():
    defaults = yaml.safe_load((find_chart() / "values.yaml").read_text())
    rule = next(r for r in promises.RULES if r.check is promises._security_context)
    set_here = {promises.key_text(p) for p, v in promises._walk(defaults)
                if p and rule.matches(promises.key_text(p)) and v}
    assert set_here == set(promises.OWN_CONTEXTS)


def test_chart_readme_lists_every_promise_and_its_keys():
    readme = (ROOT / "charts" / "metaflow" / "README.md").read_text()
    section = readme[readme.index("\n## Security promises\n"):]
    section = section[:section.index("\n## ", 1)]
    for promise in promises.PROMISES:
        assert promise in section, promise
    for rule in promises.RULES:
        assert rule.doc in section, rule.doc


# --- metaflowConfig.extra: add, never replace --------------------------------------------


@pytest.mark.parametrize("key", PUBLISHED_CONFIG + PUBLISHED_ARGO_CONFIG + PUBLISHED_EVENTS_CONFIG)
@pytest.mark.parametrize("profile", ["azure", "local"])
def test_extra_may_not_replace_a_published_key(profile: str, key: str):
    base, protected = base_for(profile)
    expr = f"metaflowConfig.extra.{key}=https://elsewhere/"
    with pytest.raises(MfhelmError) as err:
        UserValues.read(sets=[expr]).apply(base, protected)
    assert str(err.value) == (
        f"--set {expr} sets metaflowConfig.extra.{key}, but {key} is published by the stack in "
        "the Metaflow config every data scientist's is built from: extra keys may add to it, "
        "never replace one; remove it")


def test_extra_keys_that_add_pass_and_events_keys_are_free_without_events():
    merged = UserValues.read(sets=["metaflowConfig.extra.METAFLOW_AZURE_KEY_VAULT_PREFIX=kv"])\
        .apply(azure_values(), AZURE_PROTECTED)
    assert merged["metaflowConfig"]["extra"] == {"METAFLOW_AZURE_KEY_VAULT_PREFIX": "kv"}
    base = values_mod.local_values(argo=True, airflow=False, flow_namespace="mf-flows",
                                   argo_events=False)
    UserValues.read(sets=["metaflowConfig.extra.METAFLOW_ARGO_EVENTS_EVENT=mine"]).apply(
        base, LOCAL_PROTECTED)
