"""Given these values, this field is: assertions on the rendered chart."""

import json

import jmespath
import pytest
from chartlib import (
    SCENARIOS,
    HelmError,
    all_containers,
    by_kind,
    env_of,
    get,
    pod_specs,
    render,
)

AZURE = SCENARIOS["azure"]
AZURE_AIRFLOW = SCENARIOS["azure-airflow"]
LOCAL = SCENARIOS["local"]
LOCAL_AIRFLOW = SCENARIOS["local-airflow"]
CLIENT_ID = "00000000-0000-0000-0000-0000000000c1"


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_workload_selectors_match_their_pod_labels(scenario):
    for obj, _spec in pod_specs(render([SCENARIOS[scenario]])):
        if obj["kind"] == "Job":
            continue
        selector = obj["spec"]["selector"]["matchLabels"]
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert _matches(selector, labels), obj["metadata"]["name"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_service_selects_exactly_one_workload(scenario):
    objs = render([SCENARIOS[scenario]])
    templates = [(o["metadata"]["name"], o["spec"]["template"]["metadata"]["labels"])
                 for o, _ in pod_specs(objs)]
    for svc in by_kind(objs, "Service"):
        hits = [n for n, labels in templates if _matches(svc["spec"]["selector"], labels)]
        assert len(hits) == 1, (svc["metadata"]["name"], hits)


def test_static_ui_service_reaches_static_ui_pods():
    objs = render([AZURE], release="mf")
    svc = get(objs, "Service", "mf-ui")
    pod_labels = get(objs, "Deployment", "mf-ui-static")["spec"]["template"]["metadata"]["labels"]
    assert _matches(svc["spec"]["selector"], pod_labels)
    assert svc["spec"]["ports"][0]["port"] == 3000


def _db_containers(objs):
    for obj, spec in pod_specs(objs):
        for c in all_containers(spec):
            if "MF_METADATA_DB_HOST" in env_of(c):
                yield obj, c


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([AZURE], "require"),
        ([AZURE_AIRFLOW], "require"),
        ([LOCAL], "disable"),
        ([SCENARIOS["argo-off"]], "verify-full"),
    ],
)
def test_ssl_mode_reaches_every_database_client(values, expected):
    found = list(_db_containers(render(values)))
    names = {c["name"] for _, c in found}
    assert {"migrations", "metadata", "ui-backend"} <= names
    for _obj, c in found:
        assert env_of(c)["MF_METADATA_DB_SSL_MODE"]["value"] == expected, c["name"]


def test_verify_full_mounts_the_ca_bundle_for_services_and_migrations():
    objs = render([SCENARIOS["argo-off"]])
    for obj, c in _db_containers(objs):
        env = env_of(c)
        assert env["MF_METADATA_DB_SSL_ROOT_CERT"]["value"] == "/etc/metaflow/db-ca/ca.crt"
        assert env["MF_METADATA_DB_SSL_ROOT_CERT_PATH"]["value"] == "/etc/metaflow/db-ca/ca.crt"
        assert "db-ca" in {m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in obj["spec"]["template"]["spec"]["volumes"]}
        assert vols["db-ca"]["configMap"]["name"] == "azure-postgres-ca"


def test_verify_full_without_ca_is_refused():
    with pytest.raises(HelmError, match="sslRootCertConfigMap"):
        render([AZURE], {"database": {"sslMode": "verify-full"}})


def test_migrations_run_on_every_rollout_not_only_on_empty_db():
    objs = render([AZURE], release="mf")
    init = get(objs, "Deployment", "mf-metadata")["spec"]["template"]["spec"]["initContainers"]
    cmd = init[0]["command"]
    assert cmd[:2] == ["/opt/latest/bin/python3", "/root/run_goose.py"]
    assert "--only-if-empty-db" not in cmd
    assert "--wait" in cmd


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_password_only_ever_comes_from_a_secret(scenario):
    for _obj, c in _db_containers(render([SCENARIOS[scenario]])):
        pswd = env_of(c)["MF_METADATA_DB_PSWD"]
        assert "value" not in pswd
        assert pswd["valueFrom"]["secretKeyRef"]["name"]


@pytest.mark.parametrize("scenario", ["azure", "azure-airflow", "argo-off"])
def test_azure_profile_renders_no_password_secret(scenario):
    objs = render([SCENARIOS[scenario]])
    secrets = by_kind(objs, "Secret")
    for s in secrets:
        keys = set(s.get("data", {})) | set(s.get("stringData", {}))
        assert "password" not in keys and "connection" not in keys, s["metadata"]["name"]


def test_local_password_appears_only_inside_secrets():
    canary = "canary-Pw-4711"
    text_objs = render([LOCAL_AIRFLOW], {"database": {"password": canary}})
    for obj in text_objs:
        if obj["kind"] == "Secret":
            continue
        assert canary not in json.dumps(obj), f"{obj['kind']}/{obj['metadata']['name']}"
    secrets = [o for o in text_objs if o["kind"] == "Secret"]
    assert any(canary in json.dumps(s) or "Y2FuYXJ5" in json.dumps(s) for s in secrets)


def test_azure_refuses_a_password_value_and_requires_existing_secret():
    with pytest.raises(HelmError, match="local profile only"):
        render([AZURE], {"database": {"password": "x"}})
    with pytest.raises(HelmError, match="existingSecret is required"):
        render([AZURE], {"database": {"existingSecret": ""}})


def test_workload_identity_annotations_and_labels():
    objs = render([AZURE_AIRFLOW], release="mf")
    # Argo Events' Sensors run as their own account, with no Azure identity.
    accounts = [sa for sa in by_kind(objs, "ServiceAccount")
                if sa["metadata"]["labels"]["app.kubernetes.io/component"] != "sensors"]
    for sa in accounts:
        ann = sa["metadata"]["annotations"]
        assert ann["azure.workload.identity/client-id"] == CLIENT_ID
    names = {sa["metadata"]["name"] for sa in accounts}
    assert names == {"metaflow-service", "metaflow-flows", "metaflow-airflow"}
    backend = get(objs, "Deployment", "mf-ui-backend")["spec"]["template"]
    assert backend["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert backend["spec"]["serviceAccountName"] == "metaflow-service"
    config = json.loads(get(objs, "ConfigMap", "mf-metaflow-config")["data"]["config.json"])
    assert config["METAFLOW_KUBERNETES_LABELS"] == "azure.workload.identity/use=true"
    assert config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"] == "metaflow-flows"


def test_no_airflow_service_account_without_airflow():
    names = {sa["metadata"]["name"] for sa in by_kind(render([AZURE]), "ServiceAccount")}
    assert "metaflow-airflow" not in names


def test_flow_rbac_has_argo_task_results_and_no_pod_creation():
    objs = render([AZURE], release="mf")
    rules = get(objs, "Role", "mf-flows")["rules"]
    grants = {(res, verb) for r in rules for res in r["resources"] for verb in r["verbs"]}
    for verb in ("create", "patch", "get", "list"):
        assert ("workflowtaskresults", verb) in grants
    assert {("workflowtasksets", "list"), ("workflowtasksets", "watch"),
            ("workflowtasksets/status", "patch")} <= grants
    assert not any(res == "pods" for res, _ in grants)
    binding = get(objs, "RoleBinding", "mf-flows")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "metaflow-flows", "namespace": "metaflow"}
    ]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_nothing_cluster_wide(scenario):
    kinds = {o["kind"] for o in render([SCENARIOS[scenario]])}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_airflow_can_launch_pods_in_the_flow_namespace():
    objs = render([AZURE_AIRFLOW], {"flows": {"namespace": "jobs"}, "argo-workflows": {"enabled": False},
                                  "argo-events": {"enabled": False}},
                  release="mf")
    role = get(objs, "Role", "mf-airflow-pod-launcher")
    assert role["metadata"]["namespace"] == "jobs"
    verbs = {v for r in role["rules"] if "pods" in r["resources"] for v in r["verbs"]}
    assert {"create", "get", "list", "watch", "delete"} <= verbs
    binding = get(objs, "RoleBinding", "mf-airflow-pod-launcher")
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount", "name": "metaflow-airflow", "namespace": "metaflow"}
    flows_sa = [s for s in by_kind(objs, "ServiceAccount") if s["metadata"]["name"] == "metaflow-flows"]
    assert flows_sa[0]["metadata"]["namespace"] == "jobs"


def test_airflow_logging_points_at_airflow_logs_container():
    objs = render([AZURE_AIRFLOW], release="mf")
    env = get(objs, "ConfigMap", "metaflow-airflow-env")["data"]
    assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
    assert env["AIRFLOW__AZURE_REMOTE_LOGGING__REMOTE_WASB_LOG_CONTAINER"] == "airflow-logs"
    assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"].startswith("wasb")
    conn_id = env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"]
    conn = json.loads(get(objs, "Secret", "metaflow-airflow-conn")["stringData"][f"AIRFLOW_CONN_{conn_id.upper()}"])
    assert conn["conn_type"] == "wasb"
    assert conn["login"] == "acmemfabc123"
    assert conn["extra"]["managed_identity_client_id"] == CLIENT_ID


def test_local_airflow_logs_go_to_azurite():
    objs = render([LOCAL_AIRFLOW], release="mf")
    conn = json.loads(get(objs, "Secret", "metaflow-airflow-conn")["stringData"]["AIRFLOW_CONN_WASB_LOGS"])
    assert "BlobEndpoint=https://mf-azurite.metaflow.svc.cluster.local:10000/devstoreaccount1;" in conn["extra"]["connection_string"]
    job = get(objs, "Job", "mf-azurite-init")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
        "metaflow-storage", "airflow-logs"]


def test_airflow_subchart_values_name_the_objects_we_render():
    """extraEnvFrom / volumes in values.yaml go to the Airflow chart verbatim;
    they must name objects this chart renders, whatever the release name."""
    import yaml
    from chartlib import CHART

    values = yaml.safe_load((CHART / "values.yaml").read_text())["airflow"]
    objs = render([AZURE_AIRFLOW], release="mf")
    rendered = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert "{{" not in values["extraEnvFrom"] + str(values["volumes"])
    refs = yaml.safe_load(values["extraEnvFrom"])
    assert ("ConfigMap", refs[0]["configMapRef"]["name"]) in rendered
    assert ("Secret", refs[1]["secretRef"]["name"]) in rendered
    vol = values["volumes"][0]["configMap"]["name"]
    assert ("ConfigMap", vol) in rendered
    assert values["dags"]["persistence"]["existingClaim"] == "metaflow-airflow-dags"
    assert ("PersistentVolumeClaim", "metaflow-airflow-dags") in rendered
    assert values["executor"] == "LocalExecutor"
    assert values["defaultAirflowTag"].startswith("2.10.")
    for component in ("scheduler", "webserver"):
        assert values[component]["serviceAccount"] == {"create": False, "name": "metaflow-airflow"}


def test_dag_volume_survives_uninstall():
    pvc = get(render([AZURE_AIRFLOW]), "PersistentVolumeClaim", "metaflow-airflow-dags")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_mismatched_dag_claim_is_refused():
    with pytest.raises(HelmError, match="existingClaim must equal"):
        render([AZURE_AIRFLOW], {"airflowGlue": {"dags": {"claimName": "other"}}})


# The containers that run as uid 0, each documented where it is rendered.
ROOT_ALLOWED = {
    "migrations": "values.yaml: the image keeps run_goose.py under /root",
    "nvidia-device-plugin-ctr": "gpu-device-plugin.yaml: the kubelet's device-plugins directory "
                                "and socket are root's (test_chart_gpu_device_plugin.py)",
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_container_has_requests_limits_and_hardening(scenario):
    for obj, spec in pod_specs(render([SCENARIOS[scenario]])):
        pod_sc = spec.get("securityContext", {})
        for c in all_containers(spec):
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            if c["name"] in ROOT_ALLOWED:
                continue
            assert non_root is True, where


def test_flow_pods_steered_to_taskworkers():
    objs = render([AZURE], release="mf")
    config = json.loads(get(objs, "ConfigMap", "mf-metaflow-config")["data"]["config.json"])
    assert config["METAFLOW_KUBERNETES_NODE_SELECTOR"] == "mfhelm.io/pool=taskworkers"
    assert json.loads(config["METAFLOW_KUBERNETES_TOLERATIONS"]) == [
        {"effect": "NoSchedule", "key": "mfhelm.io/pool", "operator": "Equal", "value": "taskworkers"}]
    assert config["METAFLOW_DATASTORE_SYSROOT_AZURE"] == "metaflow-storage/metaflow"
    assert config["METAFLOW_SERVICE_INTERNAL_URL"] == "http://mf-metadata.metaflow.svc.cluster.local:8080"
    metadata = get(objs, "Deployment", "mf-metadata")["spec"]["template"]["spec"]
    assert metadata["nodeSelector"] == {"mfhelm.io/pool": "services"}


def test_no_ingress_and_port_forward_url_by_default():
    objs = render([AZURE], release="mf")
    assert not by_kind(objs, "Ingress")
    static = get(objs, "Deployment", "mf-ui-static")
    assert jmespath.search("spec.template.spec.containers[0].env[?name=='METAFLOW_SERVICE'].value | [0]",
                           static) == "http://localhost:8083/api"


def test_local_profile_runs_postgres_and_azurite_in_cluster():
    objs = render([LOCAL], release="mf")
    sts = get(objs, "StatefulSet", "mf-postgres")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    get(objs, "Deployment", "mf-azurite")
    env = env_of(get(objs, "Deployment", "mf-metadata")["spec"]["template"]["spec"]["containers"][0])
    assert env["MF_METADATA_DB_HOST"]["value"] == "mf-postgres"
    config = json.loads(get(objs, "ConfigMap", "mf-metaflow-config")["data"]["config.json"])
    assert config["METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"] == "https://mf-azurite.metaflow.svc.cluster.local:10000/devstoreaccount1/"


def test_azure_profile_has_no_in_cluster_database():
    objs = render([AZURE])
    assert not by_kind(objs, "StatefulSet")
    assert not [o for o in by_kind(objs, "Deployment") if "azurite" in o["metadata"]["name"]]
