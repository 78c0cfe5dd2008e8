"""A flow on a schedule: `argo-workflows create` makes a CronWorkflow that
starts it every minute (the smallest cron step)."""

from metaflow import FlowSpec, schedule, step


@schedule(cron="* * * * *")
class ScheduleFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ScheduleFlow()
