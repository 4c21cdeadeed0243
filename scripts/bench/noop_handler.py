"""A TorchServe handler that does nothing: every request answered with a few bytes of
JSON, no model. Archived with a model's own batching and workers (scripts/bench/gpu.py),
it measures what TorchServe's frontend and its worker protocol pass per second with the
same bodies: the ceiling any handler is served under."""


class NoopHandler:
    def initialize(self, context) -> None:
        self.answer = b'{"ok":true}'

    def handle(self, data: list, context) -> list[bytes]:
        return [self.answer] * len(data)
