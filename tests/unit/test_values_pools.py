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
