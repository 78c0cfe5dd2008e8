"""The smallest flow with each shape Metaflow compiles differently for Argo:
a linear step, a static branch (split/join) and a foreach (fan-out/join)."""

from metaflow import FlowSpec, step


class BranchForeachFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2, 3]
        self.next(self.prepare)

    @step
    def prepare(self):
        self.offset = 10
        self.next(self.left, self.right)

    @step
    def left(self):
        self.side = "left"
        self.next(self.join_branch)

    @step
    def right(self):
        self.side = "right"
        self.next(self.join_branch)

    @step
    def join_branch(self, inputs):
        self.sides = sorted(i.side for i in inputs)
        self.merge_artifacts(inputs, exclude=["side"])
        self.next(self.fan_out)

    @step
    def fan_out(self):
        self.next(self.square, foreach="items")

    @step
    def square(self):
        self.value = self.input * self.input + self.offset
        self.next(self.join_foreach)

    @step
    def join_foreach(self, inputs):
        self.total = sum(i.value for i in inputs)
        self.merge_artifacts(inputs, exclude=["value"])
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total, "sides", self.sides)


if __name__ == "__main__":
    BranchForeachFlow()
