"""The metadata service release, and how the UI backend stops and how much
disk its caches may fill.

Facts from Netflix/metaflow-service at v2.5.1 (the image tag values.yaml pins):
- services/ui_backend_service/ui_server.py: SIGTERM, SIGHUP and SIGINT get a
  handler that only logs the signal; the server keeps running until killed.
- services/ui_backend_service/data/cache/store.py: the three disk caches
  take their limits in bytes from CACHE_ARTIFACT_STORAGE_LIMIT,
  CACHE_DAG_STORAGE_LIMIT and CACHE_LOG_STORAGE_LIMIT, and default to 1/2,
  1/4 and 1/5 of shutil.disk_usage("/").total; their roots are
  cache_data/artifact_search, cache_data/dag and cache_data/log under the
  working directory.
- services/ui_backend_service/data/cache/card_cache_manager.py: the card
  cache lives in CARD_CACHE_STORAGE_PATH, default /tmp, with no size limit.
- `git diff v2.5.0 v2.5.1 --stat` touches neither Dockerfile (the image's)
  nor setup.py's entry points, and the environment variables the code reads
  are the same set.
"""

import pytest
import yaml
from chartlib import CHART, SCENARIOS, HelmError, env_of, get, render

AZURE = SCENARIOS["azure"]
LOCAL = SCENARIOS["local"]
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
MIB = 1024 * 1024
CACHE_ENV = {  # store.py's variable -> our value's key
    "CACHE_ARTIFACT_STORAGE_LIMIT": "artifactMiB",
    "CACHE_DAG_STORAGE_LIMIT": "dagMiB",
    "CACHE_LOG_STORAGE_LIMIT": "logMiB",
}


def _backend(objs):
    spec = get(objs, "Deployment", "mf-ui-backend")["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "ui-backend")
    return spec, container


def _volume(spec, container, path):
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
    return next(v for v in spec["volumes"] if v["name"] == mount["name"])


def _mib(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity.removesuffix("Mi"))


# -- The release.

def test_metadata_service_is_v2_5_1_and_the_chart_says_so():
    tag = VALUES["metadata"]["image"]["tag"]
    assert tag == "v2.5.1"  # fixes the SQL injection in row updates
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == tag.removeprefix("v")
    objs = render([AZURE], release="mf")
    for name in ("mf-metadata", "mf-ui-backend"):
        spec = get(objs, "Deployment", name)["spec"]["template"]["spec"]
        images = {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
        assert images == {f"netflixoss/metaflow_metadata_service:{tag}"}, name


# -- Stopping.

@pytest.mark.parametrize("scenario", [AZURE, LOCAL])
def test_backend_pods_are_killed_soon_after_sigterm(scenario):
    spec, _ = _backend(render([scenario], release="mf"))
    assert VALUES["ui"]["backend"]["terminationGracePeriodSeconds"] == 5
    assert spec["terminationGracePeriodSeconds"] == 5
    spec, _ = _backend(render([scenario], {"ui": {"backend": {
        "terminationGracePeriodSeconds": 12}}}, release="mf"))
    assert spec["terminationGracePeriodSeconds"] == 12


# -- Caches.

def test_cache_limits_reach_the_backend_in_bytes():
    _, c = _backend(render([AZURE], release="mf"))
    env = env_of(c)
    cache = VALUES["ui"]["backend"]["cache"]
    for variable, key in CACHE_ENV.items():
        assert env[variable]["value"] == str(cache[key] * MIB), variable
    # Every one set, so none falls back to a fraction of the node's disk.
    assert (cache["artifactMiB"], cache["dagMiB"], cache["logMiB"]) == (2048, 256, 1024)
    _, c = _backend(render([AZURE], {"ui": {"backend": {"cache": {
        "artifactMiB": 10240}}}}, release="mf"))
    assert env_of(c)["CACHE_ARTIFACT_STORAGE_LIMIT"]["value"] == str(10240 * MIB)


def test_cache_volume_holds_the_three_caches_and_is_bounded():
    spec, c = _backend(render([AZURE], release="mf"))
    work = _volume(spec, c, c["workingDir"])  # cache_data/ is relative to it
    cache = VALUES["ui"]["backend"]["cache"]
    limits = sum(cache[key] for key in CACHE_ENV.values())
    assert _mib(work["emptyDir"]["sizeLimit"]) == limits + cache["headroomMiB"]
    assert limits < _mib(work["emptyDir"]["sizeLimit"])  # caches refuse before eviction
    tmp = _volume(spec, c, "/tmp")  # the card cache
    assert _mib(tmp["emptyDir"]["sizeLimit"]) == cache["tmpMiB"] == 1024


def test_cache_volume_follows_the_values():
    spec, c = _backend(render([LOCAL], {"ui": {"backend": {"cache": {
        "artifactMiB": 100, "dagMiB": 10, "logMiB": 20, "headroomMiB": 5, "tmpMiB": 7}}}},
        release="mf"))
    assert _volume(spec, c, c["workingDir"])["emptyDir"]["sizeLimit"] == "135Mi"
    assert _volume(spec, c, "/tmp")["emptyDir"]["sizeLimit"] == "7Mi"
    assert env_of(c)["CACHE_LOG_STORAGE_LIMIT"]["value"] == str(20 * MIB)


@pytest.mark.parametrize(("values", "key"), [
    ({"cache": {"artifactMiB": 0}}, "artifactMiB"),
    ({"cache": {"logMiB": "1Gi"}}, "logMiB"),
    ({"cache": {"headroomMiB": -1}}, "headroomMiB"),
    ({"cache": {"cardsMiB": 10}}, "cardsMiB"),
    ({"terminationGracePeriodSeconds": -1}, "terminationGracePeriodSeconds"),
    ({"terminationGracePeriodSeconds": "5s"}, "terminationGracePeriodSeconds"),
])
def test_bad_backend_values_are_refused(values, key):
    with pytest.raises(HelmError, match=key):
        render([AZURE], {"ui": {"backend": values}})
