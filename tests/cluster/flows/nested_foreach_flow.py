"""A foreach inside a foreach: 2 x 3 inner tasks, each inner join counts its
3, the outer join counts 2 groups and 6 in all."""

from metaflow import FlowSpec, step


class NestedForeachFlow(FlowSpec):
    @step
    def start(self):
        self.outer = ["a", "b"]
        self.next(self.per_outer, foreach="outer")

    @step
    def per_outer(self):
        self.letter = self.input
        self.inner = [1, 2, 3]
        self.next(self.per_inner, foreach="inner")

    @step
    def per_inner(self):
        self.item = f"{self.letter}{self.input}"
        self.next(self.join_inner)

    @step
    def join_inner(self, inputs):
        self.items = sorted(i.item for i in inputs)
        assert len(self.items) == 3
        self.next(self.join_outer)

    @step
    def join_outer(self, inputs):
        self.groups = [i.items for i in inputs]
        assert len(self.groups) == 2 and sum(len(g) for g in self.groups) == 6
        self.next(self.end)

    @step
    def end(self):
        print("groups", self.groups)


if __name__ == "__main__":
    NestedForeachFlow()
