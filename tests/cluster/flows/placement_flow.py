"""Steps for each pool, written as the README tells a data scientist to: CPU
steps with no argument, GPU steps with `@kubernetes(gpu=1)` or
`@resources(gpu=1)`, and a retryable step sent to Spot with
`@kubernetes(node_selector="mfhelm.io/pool=spot")` plus `@retry`."""

from metaflow import FlowSpec, kubernetes, resources, retry, step


class PlacementFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @kubernetes(gpu=1)
    @step
    def train(self):
        self.next(self.evaluate)

    @resources(gpu=1)
    @step
    def evaluate(self):
        self.next(self.score)

    @retry(times=2)
    @kubernetes(node_selector="mfhelm.io/pool=spot")
    @step
    def score(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PlacementFlow()
