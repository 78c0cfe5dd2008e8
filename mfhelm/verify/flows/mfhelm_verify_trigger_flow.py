"""The flow `mfhelm verify` deploys to prove Argo Events: an event named
`mfhelm_verify`, published to the webhook, starts a run of it."""

from metaflow import FlowSpec, current, step, trigger  # type: ignore[attr-defined]


@trigger(event="mfhelm_verify")
class MfhelmVerifyTriggerFlow(FlowSpec):
    @step
    def start(self):
        print(f"mfhelm-verify {current.run_id}")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MfhelmVerifyTriggerFlow()
