"""A run that stays running until the test lets it go (the data scientist
suspends, resumes or terminates the run meanwhile).

`hold` asks `<MFHELM_TEST_HOLD_URL>/<run id>` every half second until the
answer is `go`. The URL is read when the flow is created (`argo-workflows
create` bakes @environment's vars into the WorkflowTemplate) and given to
the step's container as an environment variable. The wait is bounded: a
step nobody releases fails after HOLD_LIMIT seconds."""

import os
import time
import urllib.request

from metaflow import FlowSpec, current, environment, step

URL_VAR = "MFHELM_TEST_HOLD_URL"
HOLD_LIMIT = 900


class HoldFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.hold)

    @environment(vars={URL_VAR: os.environ.get(URL_VAR, "")})
    @step
    def hold(self):
        if not os.environ.get(URL_VAR):
            raise RuntimeError(f"{URL_VAR} was not set when the flow was created")
        url = f"{os.environ[URL_VAR]}/{current.run_id}"
        deadline = time.monotonic() + HOLD_LIMIT
        while True:
            with urllib.request.urlopen(url, timeout=10) as resp:
                if resp.read() == b"go":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not released within {HOLD_LIMIT}s")
            time.sleep(0.5)
        self.released = True
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HoldFlow()
