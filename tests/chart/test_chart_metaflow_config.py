"""The published Metaflow config (`<release>-metaflow-config`): the keys the
stack publishes are the ones mfhelm knows (uservalues.PUBLISHED_CONFIG, and
with Argo Events PUBLISHED_EVENTS_CONFIG) and the ones `mfhelm config`
writes; `metaflowConfig.extra` adds keys beside them and the chart refuses
one that would replace a published key, so a plain `helm install` is held to
it too."""

import json

import fake_arm
import pytest
from chartlib import SCENARIOS, HelmError, get, render

from mfhelm import settings
from mfhelm.metaflow_config import build_config
from mfhelm.uservalues import PUBLISHED_ARGO_CONFIG, PUBLISHED_CONFIG, PUBLISHED_EVENTS_CONFIG

AZURE = SCENARIOS["azure"]
LOCAL = SCENARIOS["local"]
EVENTS_OFF = {"argo-events": {"enabled": False}}
ARGO_OFF = {"argo-workflows": {"enabled": False}, **EVENTS_OFF}


def published(values_file, values=None) -> dict[str, str]:
    objs = render([values_file], values, release="mf")
    return json.loads(get(objs, "ConfigMap", "mf-metaflow-config")["data"]["config.json"])


@pytest.mark.parametrize("scenario", [AZURE, LOCAL])
def test_published_keys_are_the_ones_mfhelm_knows(scenario):
    assert set(published(scenario)) == set(
        PUBLISHED_CONFIG + PUBLISHED_ARGO_CONFIG + PUBLISHED_EVENTS_CONFIG)
    assert set(published(scenario, EVENTS_OFF)) == set(PUBLISHED_CONFIG + PUBLISHED_ARGO_CONFIG)
    assert set(published(scenario, ARGO_OFF)) == set(PUBLISHED_CONFIG)


@pytest.mark.parametrize("scenario", [AZURE, LOCAL])
def test_cron_workflows_are_written_with_schedules_where_argo_runs(scenario):
    # Argo 4 reads only `schedules`; Metaflow writes it with this key on.
    assert published(scenario)["METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES"] == "true"


def test_mfhelm_config_writes_the_published_keys():
    s = settings.parse({"org_prefix": "acme", "location": "westeurope"})
    assert set(build_config(fake_arm.sample_outputs(), s)) == set(
        PUBLISHED_CONFIG + PUBLISHED_ARGO_CONFIG + PUBLISHED_EVENTS_CONFIG)


def test_extra_keys_are_added_beside_the_published_ones():
    config = published(AZURE, {"metaflowConfig": {"extra": {
        "METAFLOW_AZURE_KEY_VAULT_PREFIX": "https://kv.vault.azure.net/"}}})
    assert config["METAFLOW_AZURE_KEY_VAULT_PREFIX"] == "https://kv.vault.azure.net/"
    assert config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"] == "metaflow-flows"


@pytest.mark.parametrize("key", PUBLISHED_CONFIG + PUBLISHED_ARGO_CONFIG + PUBLISHED_EVENTS_CONFIG)
def test_an_extra_key_may_not_replace_a_published_one(key):
    with pytest.raises(HelmError) as err:
        published(AZURE, {"metaflowConfig": {"extra": {key: "https://elsewhere/"}}})
    assert (f"metaflowConfig.extra.{key}: {key} is published by the stack in the Metaflow "
            "config; extra keys may add to it, never replace one") in str(err.value)


def test_events_keys_are_free_for_extra_without_argo_events():
    config = published(AZURE, {**EVENTS_OFF, "metaflowConfig": {"extra": {
        "METAFLOW_ARGO_EVENTS_EVENT": "mine"}}})
    assert config["METAFLOW_ARGO_EVENTS_EVENT"] == "mine"
