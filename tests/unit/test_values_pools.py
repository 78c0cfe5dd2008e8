"""values.render_values: the GPU pool's output turns the NVIDIA device plugin on."""

import fake_arm
import pytest

from mfhelm import settings, values

S = settings.parse({"org_prefix": "acme", "location": "westeurope"})


@pytest.mark.parametrize("output", [True, "True", "true"])
def test_gpu_pool_turns_the_device_plugin_on(output):
    v = values.render_values(fake_arm.sample_outputs() | {"gpuPoolEnabled": output}, S)
    assert v["gpu"] == {"enabled": True}


@pytest.mark.parametrize("output", [False, "False", "false"])
def test_no_gpu_pool_no_device_plugin(output):
    v = values.render_values(fake_arm.sample_outputs() | {"gpuPoolEnabled": output}, S)
    assert v["gpu"] == {"enabled": False}


def test_a_stack_deployed_before_the_output_has_no_gpu_pool():
    out = fake_arm.sample_outputs()
    out.pop("gpuPoolEnabled", None)
    assert values.render_values(out, S)["gpu"] == {"enabled": False}


def test_the_local_profile_has_no_gpu_pool():
    assert "gpu" not in values.local_values()


@pytest.mark.parametrize("output", [True, "True"])
def test_spot_pool_adds_its_toleration_where_the_chart_reads_the_flows_ones(output):
    """Airflow's pod hook adds the chart's flows.tolerations to the task pods
    Metaflow's DAGs launch (they carry none of their own), and the chart
    publishes them as METAFLOW_KUBERNETES_TOLERATIONS: both need the Spot one."""
    from mfhelm import metaflow_config, pools

    out = fake_arm.sample_outputs() | {"spotPoolEnabled": output}
    tolerations = values.render_values(out, S)["flows"]["tolerations"]
    assert pools.SPOT_TAINT.toleration() in tolerations
    assert pools.TASKWORKERS_TAINT.toleration() in tolerations
    import json

    published = json.loads(metaflow_config.build_config(out, S)["METAFLOW_KUBERNETES_TOLERATIONS"])
    assert published == tolerations


def test_no_spot_pool_no_spot_toleration():
    from mfhelm import pools

    tolerations = values.render_values(fake_arm.sample_outputs(), S)["flows"]["tolerations"]
    assert tolerations == [pools.TASKWORKERS_TAINT.toleration()]
