"""The NVIDIA device plugin DaemonSet (templates/gpu-device-plugin.yaml).

Upstream facts, read in github.com/NVIDIA/k8s-device-plugin at tag v0.20.0
(the newest release tag): deployments/static/nvidia-device-plugin.yml (the
default manifest), deployments/static/nvidia-device-plugin-compat-with-
cpumanager.yml, deployments/helm/nvidia-device-plugin/templates/
daemonset-device-plugin.yml with _helpers.tpl ("nvidia-device-plugin.
securityContext") and values.yaml, deployments/container/Dockerfile:

- image nvcr.io/nvidia/k8s-device-plugin:v0.20.0; the image is `USER 0:0`,
  ENTRYPOINT nvidia-device-plugin, and sets NVIDIA_VISIBLE_DEVICES=all and
  NVIDIA_DRIVER_CAPABILITIES=compute,utility itself;
- one hostPath, /var/lib/kubelet/device-plugins (type Directory), mounted at
  the same path: the kubelet's device-plugin socket directory
  (pluginapi.DevicePluginPath), where the plugin creates its socket
  (internal/plugin/server.go: net.Listen("unix", ...), its only write);
- priorityClassName system-node-critical; toleration nvidia.com/gpu Exists
  NoSchedule;
- container security context allowPrivilegeEscalation false, capabilities
  drop ALL; `privileged: true` only in the compat-with-cpumanager variant
  (PASS_DEVICE_SPECS=true, for the static CPU manager policy), SYS_ADMIN only
  with a MIG strategy other than none or the volume-mounts device list
  strategy (requiresCapSysAdmin). We use neither.
"""

from __future__ import annotations

from typing import Any

import fake_arm
import pytest
from chartlib import SCENARIOS, by_kind, render

from mfhelm import pools, settings
from mfhelm import values as values_mod

AZURE = SCENARIOS["azure"]
UPSTREAM_TAG = "v0.20.0"
UPSTREAM_IMAGE = f"nvcr.io/nvidia/k8s-device-plugin:{UPSTREAM_TAG}"
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins"
UPSTREAM_CONTAINER_CONTEXT = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
UPSTREAM_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
S = settings.parse({"org_prefix": "acme", "location": "westeurope"})


def _daemonsets(objs: list[dict]) -> list[dict]:
    return [d for d in by_kind(objs, "DaemonSet")
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "nvidia-device-plugin"]


def _plugin(values: dict | None = None) -> dict:
    found = _daemonsets(render([AZURE], values))
    assert len(found) == 1
    return found[0]


def _tolerates(toleration: dict[str, Any], taint: pools.Taint) -> bool:
    """Kubernetes' rule (k8s.io/api core/v1 Toleration.ToleratesTaint)."""
    if toleration.get("effect") and toleration["effect"] != taint.effect:
        return False
    if toleration.get("key") and toleration["key"] != taint.key:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return toleration.get("value", "") == taint.value


def test_rendered_only_with_the_gpu_pool():
    assert _daemonsets(render([AZURE], {"gpu": {"enabled": False}})) == []
    for name, path in SCENARIOS.items():
        if name != "azure":
            assert _daemonsets(render([path])) == [], name


@pytest.mark.parametrize(("output", "rendered"), [(True, 1), ("True", 1), (False, 0), (None, 0)])
def test_mfhelm_render_turns_it_on_from_the_deployment_output(output, rendered):
    outputs = fake_arm.sample_outputs()
    if output is not None:
        outputs["gpuPoolEnabled"] = output
    else:
        outputs.pop("gpuPoolEnabled", None)
    # The same values `mfhelm render` writes, over a DB Secret it names.
    objs = render([], values_mod.render_values(outputs, S))
    assert len(_daemonsets(objs)) == rendered


def test_the_pod_is_upstreams_static_manifest():
    ds = _plugin()
    assert ds["metadata"]["namespace"] == "kube-system"
    spec = ds["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert UPSTREAM_TOLERATION in spec["tolerations"]
    (container,) = spec["containers"]
    assert container["image"] == UPSTREAM_IMAGE
    # The image's entrypoint and environment, unchanged.
    assert "command" not in container and "args" not in container and "env" not in container
    (volume,) = spec["volumes"]
    assert volume["hostPath"] == {"path": DEVICE_PLUGIN_PATH, "type": "Directory"}
    assert container["volumeMounts"] == [{"name": volume["name"],
                                          "mountPath": DEVICE_PLUGIN_PATH}]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate"}


def test_least_privilege_root_without_capabilities():
    spec = _plugin()["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context == {**UPSTREAM_CONTAINER_CONTEXT, "readOnlyRootFilesystem": True}
    assert "privileged" not in context and "add" not in context["capabilities"]
    # uid 0 from the image: the kubelet's directory and socket are root's.
    assert "runAsUser" not in context and "runAsNonRoot" not in context
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert spec["automountServiceAccountToken"] is False
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert "ports" not in container


def test_it_runs_on_the_gpu_pool_and_no_other():
    spec = _plugin()["spec"]["template"]["spec"]
    selector = spec["nodeSelector"]
    assert selector == {pools.ACCELERATOR_LABEL: "nvidia"}
    every = (*pools.POOLS, *pools.OPTIONAL_POOLS)
    placed = [p.name for p in every if all(p.labels.get(k) == v for k, v in selector.items())]
    assert placed == [pools.GPU.name]
    tolerations = spec["tolerations"]
    assert all(any(_tolerates(t, taint) for t in tolerations) for taint in pools.GPU.taints)
    # Nothing it would not need: the system pool's and Spot's taints stay untolerated.
    for pool in (pools.SYSTEM, pools.SPOT):
        assert not any(_tolerates(t, taint) for t in tolerations for taint in pool.taints)


def test_tolerates_follows_kubernetes():
    taint = pools.GPU_TAINT
    assert _tolerates(UPSTREAM_TOLERATION, taint)
    assert not _tolerates({**UPSTREAM_TOLERATION, "effect": "NoExecute"}, taint)
    assert _tolerates({"key": taint.key, "operator": "Equal", "value": "true"}, taint)
    assert not _tolerates({"key": taint.key, "operator": "Equal", "value": "false"}, taint)
    assert not _tolerates({"key": "other", "operator": "Exists"}, taint)


def test_each_release_has_its_own_daemonset():
    ds = render([AZURE], release="other")
    (found,) = _daemonsets(ds)
    assert found["metadata"]["name"] == "other-nvidia-device-plugin"
    assert found["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "other"


def test_its_network_policy_lets_nothing_in_or_out():
    objs = render([AZURE])
    (policy,) = [p for p in by_kind(objs, "NetworkPolicy")
                 if p["metadata"]["namespace"] == "kube-system"]
    ds = _plugin()
    assert policy["spec"]["podSelector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"] and "egress" not in policy["spec"]
    off = render([AZURE], {"networkPolicy": {"enabled": False}})
    assert not [p for p in by_kind(off, "NetworkPolicy")
                if p["metadata"]["namespace"] == "kube-system"]
