"""A flow started when another finishes: EventTriggeredFlow's end step,
in its pod, publishes `metaflow.EventTriggeredFlow.end` to the webhook."""

from metaflow import FlowSpec, step, trigger_on_finish


@trigger_on_finish(flow="EventTriggeredFlow")
class FinishTriggeredFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FinishTriggeredFlow()
