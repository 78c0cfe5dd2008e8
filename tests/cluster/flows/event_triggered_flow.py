"""A flow started by an event: `ArgoEvent("data_ready", payload={"table": ...})`
published from anywhere (a laptop through `mfhelm port-forward`, or a step
of another flow) starts a run, its `table` parameter taken from the payload."""

from metaflow import FlowSpec, Parameter, step, trigger


@trigger(event={"name": "data_ready", "parameters": {"table": "table"}})
class EventTriggeredFlow(FlowSpec):
    table = Parameter("table", default="raw")

    @step
    def start(self):
        self.rows = len(self.table)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EventTriggeredFlow()
