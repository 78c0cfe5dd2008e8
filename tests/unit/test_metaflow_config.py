"""The end-user Metaflow config: built from outputs, written safely, read by real Metaflow."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import fake_arm
import pytest

from mfhelm.errors import MfhelmError
from mfhelm.metaflow_config import build_config, config_path, write_config
from mfhelm.settings import parse

OUTPUTS = fake_arm.sample_outputs()
SETTINGS = parse({"org_prefix": "acme", "location": "westeurope"})


def test_config_keys_for_this_stack():
    cfg = build_config(OUTPUTS, SETTINGS, service_url="http://localhost:8080")
    # The METAFLOW_ARGO_EVENTS_* keys: tests/unit/test_argo_events_settings.py.
    assert {k: v for k, v in cfg.items() if not k.startswith("METAFLOW_ARGO_EVENTS_")} == {
        "METAFLOW_DEFAULT_DATASTORE": "azure",
        "METAFLOW_DATASTORE_SYSROOT_AZURE": "metaflow-storage/metaflow",
        "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT":
            "https://acmemfstore1234567.blob.core.windows.net/",
        "METAFLOW_DEFAULT_METADATA": "service",
        "METAFLOW_SERVICE_URL": "http://localhost:8080",
        "METAFLOW_SERVICE_INTERNAL_URL":
            "http://metaflow-metadata.metaflow.svc.cluster.local:8080",
        "METAFLOW_KUBERNETES_NAMESPACE": "metaflow-flows",
        "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": "metaflow-flows",
        "METAFLOW_KUBERNETES_LABELS": "azure.workload.identity/use=true",
        "METAFLOW_KUBERNETES_NODE_SELECTOR": "mfhelm.io/pool=taskworkers",
        "METAFLOW_KUBERNETES_TOLERATIONS": '[{"key":"mfhelm.io/pool","operator":"Equal",'
                                           '"value":"taskworkers","effect":"NoSchedule"}]',
        # Argo 4 reads a CronWorkflow's `schedules` only: Metaflow writes it with this on.
        "METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES": "true",
    }


def test_no_schedules_key_without_argo():
    cfg = build_config(OUTPUTS | {"deployArgo": False}, SETTINGS,
                       service_url="http://localhost:8080")
    assert "METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES" not in cfg


def test_sysroot_has_no_scheme_or_edge_slashes_and_release_names_the_service():
    outputs = OUTPUTS | {"metaflowContainerName": "/mf-data/", "flowNamespace": "flows"}
    s = parse({"org_prefix": "acme", "location": "westeurope",
               "helm": {"release": "prod", "namespace": "metaflow", "flow_namespace": "flows"}})
    cfg = build_config(outputs, s, service_url="https://metaflow.example.com/api")
    assert cfg["METAFLOW_DATASTORE_SYSROOT_AZURE"] == "mf-data/metaflow"
    assert cfg["METAFLOW_SERVICE_INTERNAL_URL"] == (
        "http://prod-metadata.metaflow.svc.cluster.local:8080"
    )
    assert cfg["METAFLOW_KUBERNETES_NAMESPACE"] == "flows"
    assert cfg["METAFLOW_SERVICE_URL"] == "https://metaflow.example.com/api"


def test_namespace_disagreeing_with_federation_is_an_error():
    s = parse({"org_prefix": "acme", "location": "westeurope",
               "helm": {"namespace": "other", "flow_namespace": "other"}})
    with pytest.raises(MfhelmError, match=r"\[helm\] namespace = 'other'.*federated 'metaflow'"):
        build_config(OUTPUTS, s)


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://x", "http://", ""])
def test_bad_service_url(url):
    with pytest.raises(MfhelmError, match="must look like http"):
        build_config(OUTPUTS, SETTINGS, service_url=url)


def _metaflow_sees(home: Path, profile: str | None) -> dict:
    """Resolve the config the way a user's `python flow.py` does, in a clean process."""
    code = """
import json
from metaflow import metaflow_config as c
from metaflow.plugins.kubernetes.kubernetes_decorator import KubernetesDecorator
deco = KubernetesDecorator()
deco.init()  # applies the KUBERNETES_* defaults exactly as a @kubernetes step would
names = ["DEFAULT_DATASTORE", "DATASTORE_SYSROOT_AZURE", "AZURE_STORAGE_BLOB_SERVICE_ENDPOINT",
         "DEFAULT_METADATA", "SERVICE_URL", "SERVICE_INTERNAL_URL", "KUBERNETES_NAMESPACE",
         "KUBERNETES_SERVICE_ACCOUNT", "KUBERNETES_LABELS", "KUBERNETES_NODE_SELECTOR",
         "KUBERNETES_TOLERATIONS", "CARD_AZUREROOT"]
out = {n: getattr(c, n) for n in names}
out["deco"] = {k: deco.attributes[k] for k in
               ("namespace", "service_account", "node_selector", "tolerations", "labels")}
out["UNRELATED"] = c.from_conf("MY_OWN_SETTING")
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env |= {"METAFLOW_HOME": str(home), "HOME": str(home)}
    if profile:
        env["METAFLOW_PROFILE"] = profile
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=home, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("profile", [None, "azure-prod"])
def test_written_config_loads_in_real_metaflow(tmp_path, profile):
    home = tmp_path / "mfhome"
    home.mkdir()
    name = f"config_{profile}.json" if profile else "config.json"
    (home / name).write_text(json.dumps({"METAFLOW_MY_OWN_SETTING": "kept",
                                         "METAFLOW_DEFAULT_DATASTORE": "local"}))
    cfg = build_config(OUTPUTS, SETTINGS)
    path = write_config(cfg, profile, home=home)
    assert path == home / name

    seen = _metaflow_sees(home, profile)
    assert seen["DEFAULT_DATASTORE"] == "azure"
    assert seen["DATASTORE_SYSROOT_AZURE"] == "metaflow-storage/metaflow"
    assert seen["CARD_AZUREROOT"] == "metaflow-storage/metaflow/mf.cards"
    assert seen["AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"] == OUTPUTS["storageBlobEndpoint"]
    assert seen["DEFAULT_METADATA"] == "service"
    assert seen["SERVICE_URL"] == "http://localhost:8080"
    assert seen["SERVICE_INTERNAL_URL"] == "http://metaflow-metadata.metaflow.svc.cluster.local:8080"
    assert seen["KUBERNETES_NAMESPACE"] == "metaflow-flows"
    assert seen["KUBERNETES_SERVICE_ACCOUNT"] == "metaflow-flows"
    assert seen["KUBERNETES_LABELS"] == "azure.workload.identity/use=true"
    assert seen["KUBERNETES_NODE_SELECTOR"] == "mfhelm.io/pool=taskworkers"
    assert json.loads(seen["KUBERNETES_TOLERATIONS"]) == [
        {"key": "mfhelm.io/pool", "operator": "Equal", "value": "taskworkers",
         "effect": "NoSchedule"}
    ]
    assert seen["deco"] == {
        "namespace": "metaflow-flows",
        "service_account": "metaflow-flows",
        "node_selector": {"mfhelm.io/pool": "taskworkers"},
        "tolerations": [{"key": "mfhelm.io/pool", "operator": "Equal", "value": "taskworkers",
                         "effect": "NoSchedule"}],
        "labels": {"azure.workload.identity/use": "true"},
    }
    assert seen["UNRELATED"] == "kept"


def test_write_backs_up_replaced_file_and_is_private(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    original = '{"METAFLOW_SERVICE_URL": "http://old:8080"}'
    (home / "config.json").write_text(original)
    path = write_config({"METAFLOW_SERVICE_URL": "http://new:8080"}, home=home)
    assert json.loads(path.read_text()) == {"METAFLOW_SERVICE_URL": "http://new:8080"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (backup,) = home.glob("config.json.bak-*")
    assert backup.read_text() == original
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert [p.name for p in home.iterdir() if p.name.startswith(".")] == []  # no temp left

    # a second write with the same content changes nothing and makes no new backup
    write_config({"METAFLOW_SERVICE_URL": "http://new:8080"}, home=home)
    assert len(list(home.glob("config.json.bak-*"))) == 1
    write_config({"METAFLOW_SERVICE_URL": "http://newer:8080"}, home=home)
    assert len(list(home.glob("config.json.bak-*"))) == 2


def test_first_write_creates_private_home(tmp_path):
    home = tmp_path / "new" / ".metaflowconfig"
    path = write_config({"METAFLOW_DEFAULT_DATASTORE": "azure"}, "dev", home=home)
    assert path == home / "config_dev.json"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert list(home.glob("*.bak-*")) == []


def test_print_only_touches_nothing(tmp_path):
    home = tmp_path / "h"
    path = write_config({"METAFLOW_DEFAULT_DATASTORE": "azure"}, home=home, print_only=True)
    assert path == home / "config.json"
    assert not home.exists()


def test_default_home_follows_metaflow_home(tmp_path, monkeypatch):
    monkeypatch.setenv("METAFLOW_HOME", str(tmp_path))
    assert config_path("x") == tmp_path / "config_x.json"


@pytest.mark.parametrize("profile", ["../evil", "a/b", ".hidden", "x" * 64, "sp ace"])
def test_bad_profile_names(tmp_path, profile):
    with pytest.raises(MfhelmError, match="not usable as a file name"):
        write_config({}, profile, home=tmp_path)


def test_corrupt_existing_config_is_not_overwritten(tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(MfhelmError, match=r"not valid JSON \(.*\); fix or move it"):
        write_config({"METAFLOW_DEFAULT_DATASTORE": "azure"}, home=tmp_path)
    assert (tmp_path / "config.json").read_text() == "{oops"


# --- the optional pools and the flow image (issue 20) ------------------------------------

TASKWORKERS_TOLERATION = {"key": "mfhelm.io/pool", "operator": "Equal", "value": "taskworkers",
                          "effect": "NoSchedule"}
SPOT_TOLERATION = {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal",
                   "value": "spot", "effect": "NoSchedule"}
IMAGE = "acmemfacr1234.azurecr.io/metaflow-flow@sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize("spot", [True, "True", "true"])
def test_a_spot_pool_is_tolerated_by_every_step(spot):
    cfg = build_config(OUTPUTS | {"spotPoolEnabled": spot}, SETTINGS)
    assert json.loads(cfg["METAFLOW_KUBERNETES_TOLERATIONS"]) == [TASKWORKERS_TOLERATION,
                                                                 SPOT_TOLERATION]
    # Only a step that selects the pool goes there: the default selector stays.
    assert cfg["METAFLOW_KUBERNETES_NODE_SELECTOR"] == "mfhelm.io/pool=taskworkers"


@pytest.mark.parametrize("outputs", [{"spotPoolEnabled": False}, {"spotPoolEnabled": "False"},
                                     {}, {"gpuPoolEnabled": True}])
def test_no_spot_pool_no_spot_toleration_and_never_a_gpu_one(outputs):
    cfg = build_config(OUTPUTS | outputs, SETTINGS)
    # The GPU taint is tolerated by ExtendedResourceToleration, per pod, never here.
    assert json.loads(cfg["METAFLOW_KUBERNETES_TOLERATIONS"]) == [TASKWORKERS_TOLERATION]


def test_the_flow_image_comes_from_image_reference():
    assert "METAFLOW_KUBERNETES_CONTAINER_IMAGE" not in build_config(OUTPUTS, SETTINGS)
    s = parse({"org_prefix": "acme", "location": "westeurope", "image": {"reference": IMAGE}})
    assert build_config(OUTPUTS, s)["METAFLOW_KUBERNETES_CONTAINER_IMAGE"] == IMAGE


def test_real_metaflow_sends_a_spot_step_to_spot_in_the_flow_image(tmp_path):
    """What `@kubernetes(node_selector="mfhelm.io/pool=spot")` and a plain
    `@kubernetes` resolve to in Metaflow with the config written for a stack
    with the Spot pool and a flow image."""
    home = tmp_path / "mfhome"
    home.mkdir()
    s = parse({"org_prefix": "acme", "location": "westeurope", "image": {"reference": IMAGE}})
    write_config(build_config(OUTPUTS | {"spotPoolEnabled": True}, s), None, home=home)
    code = """
import json
from metaflow.plugins.kubernetes.kubernetes_decorator import KubernetesDecorator
out = {}
for name, attrs in (("spot", {"node_selector": "mfhelm.io/pool=spot"}), ("plain", {})):
    deco = KubernetesDecorator(attributes=attrs)
    deco.init()
    out[name] = {k: deco.attributes[k] for k in ("node_selector", "tolerations", "image")}
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env |= {"METAFLOW_HOME": str(home), "HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=home, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["spot"] == {"node_selector": {"mfhelm.io/pool": "spot"},
                            "tolerations": [TASKWORKERS_TOLERATION, SPOT_TOLERATION],
                            "image": IMAGE}
    assert seen["plain"]["node_selector"] == {"mfhelm.io/pool": "taskworkers"}
    assert seen["plain"]["image"] == IMAGE


@pytest.mark.parametrize(("version", "noted"), [
    ("2.19.31", True), ("2.18.7", True), ("1.22.0", True), ("2.19", True),
    ("2.19.32", False), ("2.19.39", False), ("2.20.0", False), ("3.0", False),
    ("2.19.32.post1", False), ("2.19.31rc1", True), ("unknown", False), (None, False),
])
def test_schedules_note_names_metaflow_older_than_the_key(version, noted):
    from mfhelm.metaflow_config import schedules_note

    cfg = build_config(OUTPUTS, SETTINGS, service_url="http://localhost:8080")
    note = schedules_note(cfg, version)
    assert (note is not None) is noted
    if noted:
        assert note.startswith(f"note: metaflow {version} here ignores ")
        assert "\n" not in note
    # No key (no Argo): nothing to say whatever the version.
    assert schedules_note({k: v for k, v in cfg.items()
                           if k != "METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES"}, version) is None
