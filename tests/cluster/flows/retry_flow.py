"""A step whose first attempt fails and whose retry succeeds.

On the cluster tests' fake nodes no container runs, so `flaky` is sent to a
node whose kubelet the test plays (tests/cluster/test_e2e_argo_shapes.py):
it ends the step's container as this code would, from the attempt number
Argo gives the pod (exit 1 on attempt 0, 0 after)."""

from metaflow import FlowSpec, current, kubernetes, retry, step

SCRIPTED = {"key": "mfhelm.io/test-kubelet", "operator": "Equal", "value": "scripted",
            "effect": "NoSchedule"}


class RetryFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.flaky)

    @retry(times=1, minutes_between_retries=0)
    @kubernetes(node_selector="mfhelm.io/test-kubelet=scripted", tolerations=[SCRIPTED])
    @step
    def flaky(self):
        if current.retry_count == 0:
            raise RuntimeError("the first attempt fails")
        self.attempt = current.retry_count
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetryFlow()
