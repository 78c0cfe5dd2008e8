"""What the real upstream parts need from our templates and from the values we
hand the Airflow chart. Each fact was read in the upstream source at the
pinned version (cited per test); the by-hand runs are written on issue 8.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from chartlib import (
    CHART,
    SCENARIOS,
    HelmError,
    all_containers,
    by_kind,
    env_of,
    get,
    pod_specs,
    render,
)

from mfhelm import values as values_mod

AZURE = SCENARIOS["azure"]
AZURE_AIRFLOW = SCENARIOS["azure-airflow"]
LOCAL = SCENARIOS["local"]
LOCAL_AIRFLOW = SCENARIOS["local-airflow"]
AIRFLOW_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())["airflow"]


def _container(objs, kind, name, container):
    spec = get(objs, kind, name)["spec"]["template"]["spec"]
    return spec, next(c for c in all_containers(spec) if c["name"] == container)


# -- 1. UI backend: the image's WORKDIR is /root (0700); caches go under
#       cache_data/ relative to the working directory (metaflow-service v2.5.1).

def test_ui_backend_works_in_a_writable_mounted_directory():
    spec, c = _container(render([AZURE], release="mf"), "Deployment", "mf-ui-backend",
                         "ui-backend")
    workdir = c["workingDir"]
    assert not workdir.startswith("/root")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == workdir)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume
    assert not mount.get("readOnly")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


# -- 2. Service links: Kubernetes injects <SERVICE>_PORT=tcp://IP:PORT; the
#       metadata service reads MF_METADATA_PORT, the UI backend
#       MF_UI_METADATA_PORT, so Services `mf-metadata` / `mf-ui-metadata`
#       would break them.

@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_pod_of_ours_gets_service_link_variables(scenario):
    for obj, spec in pod_specs(render([SCENARIOS[scenario]], release="mf")):
        assert spec.get("enableServiceLinks") is False, obj["metadata"]["name"]


@pytest.mark.parametrize(("workload", "container", "variable"), [
    ("mf-metadata", "metadata", "MF_METADATA_PORT"),
    ("mf-ui-backend", "ui-backend", "MF_UI_METADATA_PORT"),
])
def test_listen_ports_are_explicit_and_match_the_container_port(workload, container, variable):
    _spec, c = _container(render([AZURE], release="mf"), "Deployment", workload, container)
    port = env_of(c)[variable]["value"]
    assert port == str(c["ports"][0]["containerPort"])


def _service_link_names(service: str, ports: list[dict]) -> set[str]:
    """The variables the kubelet writes for one Service (pkg/kubelet/envvars)."""
    base = service.upper().replace("-", "_")
    names = {f"{base}_SERVICE_HOST", f"{base}_SERVICE_PORT", f"{base}_PORT"}
    for p in ports:
        proto = p.get("protocol", "TCP")
        if p.get("name"):
            names.add(f"{base}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}")
        prefix = f"{base}_PORT_{p['port']}_{proto}"
        names |= {prefix, f"{prefix}_PROTO", f"{prefix}_PORT", f"{prefix}_ADDR"}
    return names


def _metaflow_settings() -> set[str]:
    """Every METAFLOW_* variable the installed Metaflow reads (from_conf)."""
    import metaflow.metaflow_config as cfg

    source = Path(cfg.__file__).read_text()
    names = {f"METAFLOW_{n}" for n in re.findall(r'from_conf\(\s*"([A-Z0-9_]+)"', source)}
    assert "METAFLOW_SERVICE_URL" in names and len(names) > 100
    return names


@pytest.mark.parametrize("release", ["metaflow", "mf"])
def test_flow_pods_settings_are_not_shadowed_by_our_services(release):
    # Flow pods are written by Metaflow, not by us: they keep service links.
    # None of our Services may produce a variable Metaflow reads.
    objs = render([LOCAL_AIRFLOW], release=release)
    injected = set()
    for svc in by_kind(objs, "Service"):
        injected |= _service_link_names(svc["metadata"]["name"], svc["spec"]["ports"])
    assert f"{release.upper()}_METADATA_PORT" in injected  # the computation is live
    assert not injected & _metaflow_settings()


# -- 3-6. The values we hand the Airflow chart.

def test_airflow_migrations_are_a_plain_job_not_a_hook():
    # chart 1.15/1.16 templates/jobs/migrate-database-job.yaml: hook annotations
    # only when migrateDatabaseJob.useHelmHooks; scheduler and webserver wait
    # for the migrations in an init container.
    assert AIRFLOW_VALUES["migrateDatabaseJob"]["useHelmHooks"] is False
    with pytest.raises(HelmError, match="useHelmHooks must be false"):
        render([AZURE_AIRFLOW], {"airflow": {"migrateDatabaseJob": {"useHelmHooks": True}}})


def test_airflow_scheduler_claims_no_log_volume():
    # LocalExecutor + workers.persistence.enabled makes the scheduler a
    # StatefulSet with a `logs` volumeClaimTemplate (templates/scheduler).
    assert AIRFLOW_VALUES["workers"]["persistence"]["enabled"] is False
    assert AIRFLOW_VALUES["logs"]["persistence"]["enabled"] is False
    assert AIRFLOW_VALUES["scheduler"]["logGroomerSidecar"]["enabled"] is False


def test_airflow_keys_come_from_secrets_mfhelm_keeps():
    assert AIRFLOW_VALUES["webserverSecretKeySecretName"] == values_mod.AIRFLOW_WEBSERVER_SECRET
    assert AIRFLOW_VALUES["fernetKeySecretName"] == values_mod.AIRFLOW_FERNET_SECRET
    with pytest.raises(HelmError, match="webserverSecretKeySecretName"):
        render([AZURE_AIRFLOW], {"airflow": {"webserverSecretKeySecretName": ""}})


def test_no_default_airflow_admin():
    assert AIRFLOW_VALUES["webserver"]["defaultUser"]["enabled"] is False
    with pytest.raises(HelmError, match="defaultUser.enabled must stay false"):
        render([AZURE_AIRFLOW], {"airflow": {"webserver": {"defaultUser": {"enabled": True}}}})


@pytest.mark.parametrize("scenario", ["azure-airflow", "local-airflow"])
def test_admin_hook_takes_its_password_only_from_the_secret(scenario):
    objs = render([SCENARIOS[scenario]], release="mf")
    job = get(objs, "Job", "mf-airflow-admin")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    spec = job["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["image"] == f"apache/airflow:{AIRFLOW_VALUES['defaultAirflowTag']}"
    assert c["args"] == ["python", "/scripts/airflow_admin.py"]
    env = env_of(c)
    for name in ("MFHELM_AIRFLOW_ADMIN_USER", "MFHELM_AIRFLOW_ADMIN_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == values_mod.AIRFLOW_ADMIN_SECRET
    assert "password" not in json.dumps(c.get("command", []) + c["args"]).lower()
    script = get(objs, "ConfigMap", "mf-airflow-admin")["data"]["airflow_admin.py"]
    assert script == (CHART / "files" / "airflow_admin.py").read_text()


# -- 7. Local profile: Airflow's pods carry tier/component/release labels.

def _admits(policy: dict, labels: dict) -> bool:
    for rule in policy["spec"]["ingress"]:
        for peer in rule.get("from", []):
            sel = peer.get("podSelector", {}).get("matchLabels")
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                return True
    return False


def test_local_postgres_admits_airflow_pods_and_not_strangers():
    objs = render([LOCAL_AIRFLOW], release="mf")
    policy = get(objs, "NetworkPolicy", "mf-postgres")
    # The labels the Airflow chart's scheduler and migration Job carry.
    for component in ("scheduler", "webserver", "run-airflow-migrations"):
        assert _admits(policy, {"tier": "airflow", "component": component, "release": "mf"})
    assert not _admits(policy, {"tier": "airflow", "component": "scheduler", "release": "other"})
    assert not _admits(policy, {"app": "stranger"})


# -- 9. Remote log folder: wasb-<folder>, used verbatim as the blob prefix.

def test_airflow_remote_log_folder_uses_the_documented_form():
    env = get(render([AZURE_AIRFLOW]), "ConfigMap", "metaflow-airflow-env")["data"]
    assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "wasb-logs"
    with pytest.raises(HelmError, match="logFolder"):
        render([AZURE_AIRFLOW], {"airflowGlue": {"logFolder": "wasb://logs"}})


# -- 13. The static UI renders its nginx config into /etc/nginx/conf.d.

def test_static_ui_has_a_writable_conf_d():
    spec, c = _container(render([AZURE], release="mf"), "Deployment", "mf-ui-static",
                         "ui-static")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in ("/etc/nginx/conf.d", "/var/cache/nginx", "/var/run"):
        assert "emptyDir" in volumes[mounts[path]], path
    assert c["ports"][0]["containerPort"] == 3000


# -- 8. A separate flow namespace: argo-helm 1.0.18 runs the controller and
#       server with --namespaced only (their Roles in the release namespace);
#       v4.0.7 watches another namespace with --managed-namespace
#       (cmd/workflow-controller/main.go, cmd/argo/commands/server.go).

MANAGED = {"argo-workflows": {"controller": {"extraArgs": ["--managed-namespace=jobs"]},
                              "server": {"extraArgs": ["--managed-namespace=jobs"]}},
           "argo-events": {"controller": {"rbac": {"managedNamespace": "jobs"}}}}


def test_flow_namespace_without_managed_namespace_is_refused():
    with pytest.raises(HelmError, match="flows.namespace jobs is not the release namespace"):
        render([AZURE], {"flows": {"namespace": "jobs"}}, release="mf")
    # Argo off: nothing to watch, nothing to refuse.
    render([SCENARIOS["argo-off"]], {"flows": {"namespace": "jobs"}}, release="mf")


@pytest.mark.parametrize(("release", "argo_fullname"), [
    ("mf", "mf-argo-workflows"), ("argo-workflows-prod", "argo-workflows-prod")])
def test_argo_gets_its_rules_in_the_flow_namespace(release, argo_fullname):
    objs = render([AZURE], {"flows": {"namespace": "jobs"}, **MANAGED}, release=release)
    for part, must in (("workflow-controller", {("pods", "create"), ("workflows", "watch"),
                                                ("workflowtemplates", "get"),
                                                ("workflowtaskresults", "watch")}),
                       ("server", {("workflows", "create"), ("pods/log", "get")})):
        role = get(objs, "Role", f"{release}-argo-{part}")
        assert role["metadata"]["namespace"] == "jobs"
        grants = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
        assert must <= grants, part
        assert not any(r == "secrets" for r, _ in grants)
        binding = get(objs, "RoleBinding", f"{release}-argo-{part}")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{argo_fullname}-{part}",
                                        "namespace": "metaflow"}]


def test_argo_roles_are_ours_when_flows_share_the_release_namespace():
    # argo-helm's Roles are off (controller/server rbac.create): ours carry
    # the flow rules into the release namespace when flows run there.
    objs = render([AZURE], release="mf")
    for name in ("mf-argo-workflow-controller", "mf-argo-server"):
        assert get(objs, "Role", name)["metadata"]["namespace"] == "metaflow"


def test_values_we_hand_argo_render_nothing_cluster_wide():
    # argo-helm 1.0.18: createAggregateRoles renders three ClusterRoles,
    # clusterWorkflowTemplates a ClusterRoleBinding even under
    # singleNamespace, and crds.full a hook Job with its own ClusterRole and
    # ClusterRoleBinding (templates/crds-install-job.yaml).
    argo = yaml.safe_load((CHART / "values.yaml").read_text())["argo-workflows"]
    assert argo["singleNamespace"] is True
    assert argo["createAggregateRoles"] is False
    assert argo["controller"]["clusterWorkflowTemplates"]["enabled"] is False
    assert argo["server"]["clusterWorkflowTemplates"]["enabled"] is False
    assert argo["crds"]["full"] is False


def test_airflow_local_settings_default_is_emptied_not_nulled():
    # A null from the parent may not remove the Airflow chart's default
    # airflowLocalSettings, which would mount a second file at our path.
    assert AIRFLOW_VALUES["airflowLocalSettings"] == ""
    assert AIRFLOW_VALUES["volumeMounts"][0]["mountPath"] == "/opt/airflow/config/airflow_local_settings.py"


# -- Issue 9, items 2-3: who reaches Argo's server and Airflow's webserver,
#    and which pods get the workload identity.

ARGO_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())["argo-workflows"]


def test_argo_server_acts_with_the_callers_own_token():
    # argo-helm 1.0.18 turns each authModes entry into --auth-mode=<m>;
    # v4.0.7 `client` uses the caller's bearer token for every API call.
    assert ARGO_VALUES["server"]["authModes"] == ["client"]


def _policy(objs, name):
    policy = get(objs, "NetworkPolicy", name)
    return policy["spec"]["podSelector"]["matchLabels"], policy["spec"]["ingress"]


def test_argo_and_airflow_front_doors_admit_only_the_ingress_namespace():
    # The scenario's flows run in metaflow-flows: Argo watches it there.
    watch = ["--managed-namespace=metaflow-flows"]
    argo = {"enabled": True, "controller": {"extraArgs": watch}, "server": {"extraArgs": watch}}
    objs = render([LOCAL_AIRFLOW], {"argo-workflows": argo}, release="mf")
    only_ingress = [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "app-routing-system"}}}]
    selector, ingress = _policy(objs, "mf-argo-server")
    # argo-helm 1.0.18 _helpers.tpl (as 0.45.20): the server pod's name/instance labels.
    assert selector == {"app.kubernetes.io/name": "argo-workflows-server",
                        "app.kubernetes.io/instance": "mf"}
    assert ingress == [{"ports": [{"port": 2746}], "from": only_ingress}]
    selector, ingress = _policy(objs, "mf-argo-controller")
    assert selector["app.kubernetes.io/name"] == "argo-workflows-workflow-controller"
    assert ingress == []
    selector, ingress = _policy(objs, "mf-airflow-webserver")
    assert selector == {"tier": "airflow", "component": "webserver", "release": "mf"}
    assert ingress == [{"ports": [{"port": 8080}], "from": only_ingress}]
    selector, ingress = _policy(objs, "mf-airflow-scheduler")
    assert ingress == [{"ports": [{"port": 8793}], "from": [{"podSelector": {"matchLabels": {
        "tier": "airflow", "component": "webserver", "release": "mf"}}}]}]
    # Without an ingress namespace they answer port-forward only.
    objs = render([LOCAL_AIRFLOW], {"argo-workflows": argo,
                                    "networkPolicy": {"allowedNamespaces": []}}, release="mf")
    assert _policy(objs, "mf-argo-server")[1] == []
    assert _policy(objs, "mf-airflow-webserver")[1] == []


def test_workload_identity_only_where_blob_is_read_or_written():
    # Airflow chart 1.16.0 merges <component>.labels over the chart-wide labels.
    wi = {"azure.workload.identity/use": "true"}
    assert AIRFLOW_VALUES["labels"] == {}
    assert AIRFLOW_VALUES["scheduler"]["labels"] == wi   # ships task logs
    assert AIRFLOW_VALUES["webserver"]["labels"] == wi   # reads them back
    assert "labels" not in AIRFLOW_VALUES["migrateDatabaseJob"]
    for part in ("controller", "server"):
        assert "podLabels" not in ARGO_VALUES[part]
    objs = render([AZURE_AIRFLOW], release="mf")
    labelled = {o["metadata"]["name"] for o, _ in pod_specs(objs)
                if o["spec"]["template"]["metadata"]["labels"].get("azure.workload.identity/use")}
    assert labelled == {"mf-ui-backend"}  # of ours: the UI backend reads artifacts


# -- Issue 9, item 1: the db-bootstrap Job (never in a release).

def test_db_bootstrap_is_rendered_only_on_request():
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render([AZURE_AIRFLOW], release="mf")}
    assert ("Job", "mf-db-bootstrap") not in kinds
    objs = render([AZURE_AIRFLOW], {"database": {"bootstrap": {"render": True}}}, release="mf")
    spec = get(objs, "Job", "mf-db-bootstrap")["spec"]["template"]["spec"]
    env = env_of(spec["containers"][0])
    assert env["PGUSER"]["value"] == "mfadmin"
    assert env["PGSSLMODE"]["value"] == "require"
    for name in ("PGPASSWORD", "MFHELM_METAFLOW_PASSWORD", "MFHELM_AIRFLOW_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mf-db-bootstrap"
    assert env["MFHELM_METAFLOW_ROLE"]["value"] == "metaflow"
    assert env["MFHELM_AIRFLOW_ROLE"]["value"] == "airflow"
    assert spec["automountServiceAccountToken"] is False
    data = get(objs, "ConfigMap", "mf-db-bootstrap")["data"]
    assert set(data) == {"db_roles.sql", "db_role.sql"}


def test_applications_never_log_in_as_the_admin():
    with pytest.raises(HelmError, match="database.user must not be database.adminUser"):
        render([AZURE], {"database": {"user": "mfadmin"}})
    objs = render([AZURE_AIRFLOW], release="mf")
    for obj, spec in pod_specs(objs):
        for c in all_containers(spec):
            env = env_of(c)
            assert env.get("MF_METADATA_DB_USER", {}).get("value") != "mfadmin", obj["metadata"]["name"]
            assert "PGPASSWORD" not in env
