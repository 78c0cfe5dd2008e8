"""A flow whose artifact, log line and card the local profile's Azurite keeps."""

from metaflow import FlowSpec, card, current, step


class LocalProfileFlow(FlowSpec):
    @card
    @step
    def start(self):
        self.answer = 42
        print(f"local-profile-log {current.run_id}")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LocalProfileFlow()
