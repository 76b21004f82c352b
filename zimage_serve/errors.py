"""Exceptions that carry a message meant for the user: the CLI prints them as one line, HTTP as a 4xx/5xx."""


class ZImageError(Exception):
    """Base for errors whose message is safe and useful to show to the user as is."""


class InvalidInput(ZImageError, ValueError):
    """A request or argument is wrong; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ModelSourceError(ZImageError):
    """A model can't be found, fetched or validated."""


class PlanError(ZImageError):
    """No staging plan fits the GPU for the asked workload."""


class Overloaded(ZImageError):
    """Temporarily unable to serve (queue full, out of memory after retries); retry later."""


class NotReady(ZImageError):
    """A replica has no model loaded (the message says why); served as 503."""


class NeedsEmbeddings(ZImageError):
    """A prompt reached a generator replica that holds no text encoder (its plan left no room for one); the
    ingress encodes it on the CPU encoders and sends it again. Replicas' plans differ where their GPUs do."""
