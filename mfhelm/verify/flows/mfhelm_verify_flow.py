"""The flow `mfhelm verify` runs: the smallest that proves a layer works.

`start` stores an artifact (`answer = 42`) in the datastore the Metaflow
config names, and prints `mfhelm-verify <run id>` to its task log; `end`
reads the artifact back in another task. Verify reads `answer` again through
Metaflow's Client API. Shipped in the mfhelm package; verify copies it into a
scratch directory and runs it there with the user's Metaflow config.
"""

from metaflow import FlowSpec, current, step


class MfhelmVerifyFlow(FlowSpec):
    """mfhelm verify: an artifact written, logged and read back."""

    @step
    def start(self):
        self.answer = 42
        print(f"mfhelm-verify {current.run_id}")
        self.next(self.end)

    @step
    def end(self):
        if self.answer != 42:
            raise ValueError(f"answer read back as {self.answer!r}, expected 42")


if __name__ == "__main__":
    MfhelmVerifyFlow()
