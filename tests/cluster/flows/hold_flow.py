"""A run that stays running until the test lets it go: `hold` runs on the
node whose kubelet the test plays, which ends its container only when told
(the data scientist suspends, resumes or terminates the run meanwhile)."""

from metaflow import FlowSpec, kubernetes, step

SCRIPTED = {"key": "mfhelm.io/test-kubelet", "operator": "Equal", "value": "scripted",
            "effect": "NoSchedule"}


class HoldFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.hold)

    @kubernetes(node_selector="mfhelm.io/test-kubelet=scripted", tolerations=[SCRIPTED])
    @step
    def hold(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HoldFlow()
