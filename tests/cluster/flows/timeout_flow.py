"""A step that runs longer than its @timeout: `slow` says so, then sleeps
far past its limit, so only the deadline ends it."""

import time

from metaflow import FlowSpec, step, timeout


class TimeoutFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.slow)

    @timeout(seconds=90)
    @step
    def slow(self):
        print("slow: sleeping past the timeout", flush=True)
        time.sleep(3600)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TimeoutFlow()
