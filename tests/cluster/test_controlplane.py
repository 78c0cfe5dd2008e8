"""Smoke tests of the cluster the end-to-end tests run on.

Each test checks one thing the later tests rely on: the pinned version, the
node pools, scheduling, Jobs, volumes, exec streaming and RBAC.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .controlplane import kubernetes_version
from .handle import POOL_LABEL, Cluster

pytestmark = pytest.mark.cluster

# Real containers run it on kind (sh and tar needed for the exec test);
# KWOK never pulls it.
IMAGE = "busybox:1.37"
SLEEP = ["sh", "-c", "sleep 3600"]
TASKWORKERS_TOLERATION = client.V1Toleration(
    key=POOL_LABEL, operator="Equal", value="taskworkers", effect="NoSchedule"
)


def _pod(name: str, **spec: Any) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="main", image=IMAGE, command=SLEEP)],
            termination_grace_period_seconds=0,
            **spec,
        ),
    )


def _events_for(cluster: Cluster, namespace: str, name: str) -> list[str]:
    events = cluster.core().list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [f"{e.reason}: {e.message}" for e in events.items]


def test_apiserver_reports_the_pinned_version(cluster: Cluster) -> None:
    info = client.VersionApi(cluster.api_client()).get_code()
    assert info.git_version.split("+")[0] == kubernetes_version()
    major, minor = kubernetes_version().lstrip("v").split(".")[:2]
    assert (info.major, info.minor.rstrip("+")) == (major, minor)


def test_node_pools_are_ready_with_aks_labels_and_taints(cluster: Cluster) -> None:
    nodes = {n.metadata.name: n for n in cluster.core().list_node().items}
    for pool in ("system", "services", "taskworkers"):
        node = nodes[cluster.nodes[pool]]
        ready = [c.status for c in node.status.conditions if c.type == "Ready"]
        assert ready == ["True"], f"{pool} node not Ready"
        taints = {(t.key, t.value, t.effect) for t in node.spec.taints or []}
        if pool == "taskworkers":
            assert node.metadata.labels[POOL_LABEL] == "taskworkers"
            assert (POOL_LABEL, "taskworkers", "NoSchedule") in taints
        elif pool == "services":
            assert node.metadata.labels[POOL_LABEL] == "services"
            assert not [t for t in taints if t[2] in ("NoSchedule", "NoExecute")]
        else:
            assert ("CriticalAddonsOnly", "true", "NoSchedule") in taints


def test_deployment_becomes_ready_on_the_services_node(cluster: Cluster, namespace: str) -> None:
    labels = {"app": "web"}
    cluster.apps().create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=_pod("web").spec,
            ),
        ),
    ))

    def ready() -> bool:
        status = cluster.apps().read_namespaced_deployment_status("web", namespace).status
        return status.ready_replicas == 2 and status.available_replicas == 2

    cluster.wait_for(ready, 90, "deployment web to have 2 ready replicas")
    pods = cluster.core().list_namespaced_pod(namespace, label_selector="app=web").items
    assert {p.spec.node_name for p in pods} == {cluster.nodes["services"]}


def test_flow_pod_lands_on_taskworkers_and_untolerated_pod_does_not(
    cluster: Cluster, namespace: str
) -> None:
    core = cluster.core()
    selector = {POOL_LABEL: "taskworkers"}
    core.create_namespaced_pod(namespace, _pod(
        "flow", node_selector=selector, tolerations=[TASKWORKERS_TOLERATION]))
    core.create_namespaced_pod(namespace, _pod("intruder", node_selector=selector))

    pod = cluster.wait_pod_ready(namespace, "flow", timeout=90)
    assert pod.spec.node_name == cluster.nodes["taskworkers"]

    def unschedulable() -> bool:
        p = core.read_namespaced_pod("intruder", namespace)
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable"
                   for c in p.status.conditions or [])

    cluster.wait_for(unschedulable, 60, "the scheduler to refuse the untolerated pod")
    assert core.read_namespaced_pod("intruder", namespace).spec.node_name is None


def test_job_runs_to_completion(cluster: Cluster, namespace: str) -> None:
    template = _pod("once", restart_policy="Never")
    template.spec.containers[0].command = ["sh", "-c", "true"]
    cluster.batch().create_namespaced_job(namespace, client.V1Job(
        metadata=client.V1ObjectMeta(name="once"),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(spec=template.spec),
        ),
    ))

    def complete() -> bool:
        job = cluster.batch().read_namespaced_job_status("once", namespace)
        return any(c.type == "Complete" and c.status == "True"
                   for c in job.status.conditions or [])

    cluster.wait_for(complete, 120, "job once to complete")
    job = cluster.batch().read_namespaced_job_status("once", namespace)
    assert job.status.succeeded == 1
    assert not job.status.failed


def test_claim_binds_and_its_pod_runs(cluster: Cluster, namespace: str) -> None:
    core = cluster.core()
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="data"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
        ),
    ))
    pod = _pod("db", volumes=[client.V1Volume(
        name="data",
        persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name="data"),
    )])
    pod.spec.containers[0].volume_mounts = [client.V1VolumeMount(name="data", mount_path="/data")]
    core.create_namespaced_pod(namespace, pod)

    cluster.wait_pod_ready(namespace, "db", timeout=120)

    claim = core.read_namespaced_persistent_volume_claim("data", namespace)
    assert claim.status.phase == "Bound", _events_for(cluster, namespace, "data")
    assert claim.spec.storage_class_name == "standard"  # defaulted: the class is the default
    volume = core.read_persistent_volume(claim.spec.volume_name)
    assert volume.spec.claim_ref.uid == claim.metadata.uid
    assert volume.spec.capacity["storage"] == "1Gi"


def test_exec_streams_output_and_stdin(cluster: Cluster, namespace: str) -> None:
    cluster.core().create_namespaced_pod(namespace, _pod("shell"))
    cluster.wait_pod_ready(namespace, "shell", timeout=90)

    code, out, err = cluster.exec(namespace, "shell", ["sh", "-c", "echo hi > f; cat f"])
    assert (code, out.strip()) == (0, "hi"), err

    payload = b"print('pushed through exec')\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("dags/flow_dag.py")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    code, out, err = cluster.exec(
        namespace, "shell", ["sh", "-c", "mkdir -p unpacked && tar xf - -C unpacked"],
        stdin=buf.getvalue(),
    )
    assert code == 0, err
    code, out, err = cluster.exec(namespace, "shell", ["cat", "unpacked/dags/flow_dag.py"])
    assert (code, out) == (0, payload.decode()), err

    code, _out, _err = cluster.exec(namespace, "shell", ["sh", "-c", "exit 3"])
    assert code == 3

    pod_dir = cluster.pod_dir(namespace, "shell")
    if pod_dir is not None:  # KWOK runs exec on this host, in the pod's own directory
        assert (pod_dir / "unpacked" / "dags" / "flow_dag.py").read_bytes() == payload


def _claim(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.core().create_namespaced_persistent_volume_claim(
        namespace, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ))


def _pod_with_claim(name: str, claim: str, mount_path: str) -> client.V1Pod:
    pod = _pod(name, volumes=[client.V1Volume(
        name="vol",
        persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
    )])
    pod.spec.containers[0].volume_mounts = [client.V1VolumeMount(name="vol",
                                                                 mount_path=mount_path)]
    return pod


def test_exec_reaches_the_claim_at_its_mount_path(cluster: Cluster, namespace: str) -> None:
    if not cluster.exec_mounts:
        pytest.skip("exec onto volumes requires mount namespaces (`unshare --mount`) on this host")
    _claim(cluster, namespace, "shared")
    core = cluster.core()
    # Mount points are created (empty) on the host if missing: keep them in /tmp.
    where_a, where_b = "/tmp/mfhelm-mount-a", "/tmp/mfhelm-mount-b"
    core.create_namespaced_pod(namespace, _pod_with_claim("writer", "shared", where_a))
    core.create_namespaced_pod(namespace, _pod_with_claim("reader", "shared", where_b))
    cluster.wait_pod_ready(namespace, "writer", timeout=120)
    cluster.wait_pod_ready(namespace, "reader", timeout=120)

    code, out, err = cluster.exec(namespace, "writer",
                                  ["sh", "-c", f"cd {where_a} && echo payload > note && ls"])
    assert (code, out.split()) == (0, ["note"]), err
    code, out, err = cluster.exec(namespace, "reader", ["sh", "-c", f"cat {where_b}/note"])
    assert (code, out) == (0, "payload\n"), err

    if cluster.backend == "controlplane":
        claim = core.read_namespaced_persistent_volume_claim("shared", namespace)
        volume = core.read_persistent_volume(claim.spec.volume_name)
        assert (Path(volume.spec.host_path.path) / "note").read_text() == "payload\n"
        # Mounted for the exec only: the host's own directory stays untouched.
        assert not (Path(where_a) / "note").exists()


def test_rbac_is_enforced_as_subject_access_review_reports(
    cluster: Cluster, namespace: str
) -> None:
    core, rbac = cluster.core(), cluster.rbac()
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader")))
    assert not cluster.service_account_can(namespace, "reader", "get", "pods",
                                           namespace=namespace)

    rbac.create_namespaced_role(namespace, client.V1Role(
        metadata=client.V1ObjectMeta(name="pod-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get"])],
    ))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="pod-reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role",
                                  name="pod-reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader",
                                       namespace=namespace)],
    ))

    def granted() -> bool:
        return cluster.service_account_can(namespace, "reader", "get", "pods",
                                           namespace=namespace)

    cluster.wait_for(granted, 30, "RBAC to grant get pods")
    assert not cluster.service_account_can(namespace, "reader", "create", "pods",
                                           namespace=namespace)
    assert not cluster.service_account_can(namespace, "reader", "get", "pods",
                                           namespace="default")

    # The review is not the only witness: a token of that account is refused for real.
    token = core.create_namespaced_service_account_token(
        "reader", namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token
    config = client.Configuration()
    admin = cluster.api_client().configuration
    config.host, config.ssl_ca_cert = admin.host, admin.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    as_reader = client.CoreV1Api(client.ApiClient(config))
    with pytest.raises(ApiException) as denied:
        as_reader.create_namespaced_pod(namespace, _pod("nope"))
    assert denied.value.status == 403
    with pytest.raises(ApiException) as missing:
        as_reader.read_namespaced_pod("absent", namespace)
    assert missing.value.status == 404  # allowed to get: the pod is simply not there


def test_pod_logs_are_served(cluster: Cluster, namespace: str) -> None:
    pod = _pod("talker")
    pod.spec.containers[0].command = ["sh", "-c", "echo started; sleep 3600"]
    cluster.core().create_namespaced_pod(namespace, pod)
    cluster.wait_pod_ready(namespace, "talker", timeout=90)
    cluster.append_pod_log(namespace, "talker", "started\n")  # a no-op on kind

    def logged() -> str:
        return cluster.core().read_namespaced_pod_log("talker", namespace, container="main")

    assert cluster.wait_for(logged, 30, "the pod's log") == "started\n"


def test_taskworkers_node_takes_the_largest_step_its_vm_size_leaves_and_no_more(
    cluster: Cluster, namespace: str
) -> None:
    """A step asking for the taskworkers VM's full 4 vCPUs never runs on AKS
    (the reservation takes 140m); the fake node must refuse it the same way,
    through the real scheduler, and still place the largest step that fits."""
    if cluster.backend != "controlplane":
        pytest.skip("kind's nodes are the host's size, not an AKS VM size")
    from mfhelm.settings import AksSettings
    from mfhelm.sizing import allocatable, vm_size

    size_name = AksSettings().task_vm_size
    size, alloc = vm_size(size_name), allocatable(size_name)
    assert size is not None and alloc is not None
    cpu, mib = alloc
    core = cluster.core()

    def step(name: str, requests: dict[str, str]) -> client.V1Pod:
        pod = _pod(name, node_selector={POOL_LABEL: "taskworkers"},
                   tolerations=[TASKWORKERS_TOLERATION])
        pod.spec.containers[0].resources = client.V1ResourceRequirements(
            requests=requests, limits=requests)
        return pod

    core.create_namespaced_pod(namespace, step("too-big", {"cpu": str(size.vcpus)}))

    def refused() -> bool:
        p = core.read_namespaced_pod("too-big", namespace)
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable"
                   and "Insufficient cpu" in (c.message or "")
                   for c in p.status.conditions or [])

    cluster.wait_for(refused, 60, f"the scheduler to refuse {size.vcpus} CPUs on {size_name}")
    assert core.read_namespaced_pod("too-big", namespace).spec.node_name is None
    core.delete_namespaced_pod("too-big", namespace, grace_period_seconds=0)

    core.create_namespaced_pod(namespace, step("largest", {"cpu": f"{cpu}m", "memory": f"{mib}Mi"}))
    pod = cluster.wait_pod_ready(namespace, "largest", timeout=90)
    assert pod.spec.node_name == cluster.nodes["taskworkers"]


def _optional_pools_or_skip(cluster: Cluster) -> None:
    if cluster.backend != "controlplane":
        pytest.skip("the GPU and Spot pools are KWOK nodes: kind's nodes are real kubelets "
                    "with no GPU")


def test_every_node_is_in_its_pool_and_the_flow_pools_are_sized_like_their_vms(
    cluster: Cluster,
) -> None:
    """One node per pool, the optional GPU and Spot pools included, each with
    its pool's labels and taints (mfhelm.pools.pool_of finds it) and AKS's
    agentpool label; the flow pools' nodes advertise one VM of the pool's
    default size, the GPU node its GPU as the device plugin would."""
    _optional_pools_or_skip(cluster)
    from mfhelm import pools
    from mfhelm.settings import AksSettings
    from mfhelm.sizing import allocatable, vm_size

    nodes = {n.metadata.name: n for n in cluster.core().list_node().items}
    every = {p.name: p for p in (*pools.POOLS, *pools.OPTIONAL_POOLS)}
    assert set(cluster.nodes) == set(every)
    assert set(nodes) == set(cluster.nodes.values())
    for name, pool in every.items():
        node = nodes[cluster.nodes[name]]
        taints = [t.to_dict() for t in node.spec.taints or []]
        assert pools.pool_of(node.metadata.labels, taints) == pool, name
        assert node.metadata.labels["kubernetes.azure.com/agentpool"] == name
    settings = AksSettings()
    for name, size_name in (("taskworkers", settings.task_vm_size),
                            ("gpu", settings.gpu_vm_size), ("spot", settings.spot_vm_size)):
        status = nodes[cluster.nodes[name]].status
        size, alloc = vm_size(size_name), allocatable(size_name)
        assert size is not None and alloc is not None
        assert status.capacity["cpu"] == str(size.vcpus), name
        assert status.allocatable["cpu"] == f"{alloc[0]}m", name
        assert status.allocatable["memory"] == f"{alloc[1]}Mi", name
        assert status.allocatable.get(pools.GPU_RESOURCE) == (str(size.gpus) if size.gpus
                                                              else None), name
    assert nodes[cluster.nodes["gpu"]].status.allocatable[pools.GPU_RESOURCE] == "1"
    spot = nodes[cluster.nodes["spot"]]
    assert spot.metadata.labels[pools.SPOT_PRIORITY_LABEL] == "spot"
    assert {(t.key, t.value, t.effect) for t in spot.spec.taints} == {
        ("kubernetes.azure.com/scalesetpriority", "spot", "NoSchedule")}


def test_a_gpu_request_is_given_the_gpu_toleration_and_lands_on_the_gpu_node(
    cluster: Cluster, namespace: str
) -> None:
    """The flow pods' selector and toleration (taskworkers) plus a request for
    nvidia.com/gpu: ExtendedResourceToleration, as on AKS, adds the toleration
    of the GPU taint; the same pod without the request stays off that node."""
    _optional_pools_or_skip(cluster)
    from mfhelm.pools import GPU_RESOURCE

    core = cluster.core()
    selector = {POOL_LABEL: "taskworkers"}
    gpu_pod = _pod("gpu-step", node_selector=selector, tolerations=[TASKWORKERS_TOLERATION])
    gpu_pod.spec.containers[0].resources = client.V1ResourceRequirements(
        limits={GPU_RESOURCE: "1"})
    core.create_namespaced_pod(namespace, gpu_pod)
    pod = cluster.wait_pod_ready(namespace, "gpu-step", timeout=90)
    assert pod.spec.node_name == cluster.nodes["gpu"]
    added = [t for t in pod.spec.tolerations if t.key == GPU_RESOURCE]
    assert [(t.operator, t.effect, t.value) for t in added] == [("Exists", "NoSchedule", None)]

    # A second GPU step waits: the node has one GPU, and no other node any.
    gpu_pod.metadata.name = "second-gpu-step"
    core.create_namespaced_pod(namespace, gpu_pod)

    def waits() -> str | None:
        p = core.read_namespaced_pod("second-gpu-step", namespace)
        return next((c.message for c in p.status.conditions or []
                     if c.type == "PodScheduled" and c.reason == "Unschedulable"), None)

    message = cluster.wait_for(waits, 60, "the scheduler to refuse a second GPU")
    assert f"Insufficient {GPU_RESOURCE}" in message, message


def test_a_zero_gpu_request_is_given_the_gpu_toleration_too(cluster: Cluster,
                                                            namespace: str) -> None:
    """What README "GPUs" warns of: `@kubernetes(gpu=0)` compiles to a limit of
    0 nvidia.com/gpu, and ExtendedResourceToleration adds the toleration for
    any request of the resource, whatever the quantity."""
    _optional_pools_or_skip(cluster)
    from mfhelm.pools import GPU_RESOURCE

    pod = _pod("zero-gpu", node_selector={POOL_LABEL: "taskworkers"},
               tolerations=[TASKWORKERS_TOLERATION])
    pod.spec.containers[0].resources = client.V1ResourceRequirements(limits={GPU_RESOURCE: "0"})
    created = cluster.core().create_namespaced_pod(namespace, pod)
    assert [(t.key, t.operator, t.effect) for t in created.spec.tolerations
            if t.key == GPU_RESOURCE] == [(GPU_RESOURCE, "Exists", "NoSchedule")]
