"""A step that runs longer than its @timeout.

`slow` runs on the node whose kubelet the test plays: its container never
ends on its own (the sleep below), so only the deadline ends it."""

import time

from metaflow import FlowSpec, kubernetes, step, timeout

SCRIPTED = {"key": "mfhelm.io/test-kubelet", "operator": "Equal", "value": "scripted",
            "effect": "NoSchedule"}


class TimeoutFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.slow)

    @timeout(seconds=60)
    @kubernetes(node_selector="mfhelm.io/test-kubelet=scripted", tolerations=[SCRIPTED])
    @step
    def slow(self):
        time.sleep(3600)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TimeoutFlow()
