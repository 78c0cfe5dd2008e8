"""The flow `mfhelm verify` runs: start -> end, one artifact, one log line."""

from metaflow import FlowSpec, current, step


class MfhelmVerifyFlow(FlowSpec):
    @step
    def start(self):
        self.answer = 42
        print(f"mfhelm-verify {current.run_id}")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MfhelmVerifyFlow()
