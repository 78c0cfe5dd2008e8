"""A linear step, then a foreach and its join: the shapes Metaflow compiles
for Airflow (a plain KubernetesPodOperator, then a mapped one fed by XCom)."""

from metaflow import FlowSpec, step


class LinearForeachFlow(FlowSpec):
    @step
    def start(self):
        self.items = ["a", "b"]
        self.next(self.fan_out)

    @step
    def fan_out(self):
        self.next(self.shout, foreach="items")

    @step
    def shout(self):
        self.word = self.input.upper()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.words = sorted(i.word for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("words", self.words)


if __name__ == "__main__":
    LinearForeachFlow()
