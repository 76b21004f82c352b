"""Domain errors: each carries a message meant for the user, safe to show as is.

The CLI prints one as one line and exits 2; the HTTP layer (serving/http.py) maps each class to its status
in one table. Nothing here knows about HTTP. The errors cross Ray handles intact (``__reduce__`` keeps
their fields)."""

from __future__ import annotations


class ZImageError(Exception):
    """Base for errors whose message is safe and useful to show to the user as is."""

    code = "error"

    def __reduce__(self):
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(cls, args, state):
    e = cls.__new__(cls)
    Exception.__init__(e, *args)
    e.__dict__.update(state)
    return e


class InvalidInput(ZImageError, ValueError):
    """A request or argument is wrong; ``param`` names the field, ``code`` the kind of problem."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.code = param, code


class TooLarge(InvalidInput):
    """An upload is over its limit (HTTP answers 413)."""

    def __init__(self, message: str, param: str | None = None, code: str = "upload_too_large"):
        super().__init__(message, param, code)


class NotFound(InvalidInput):
    """What a request names does not exist (HTTP answers 404): a job, one of its images."""

    def __init__(self, message: str, param: str | None = None, code: str = "not_found"):
        super().__init__(message, param, code)


class ModelSourceError(ZImageError):
    """A model can't be found, fetched or validated."""


class ModelNotFound(InvalidInput):
    """A request names a model (or LoRA adapter) this deployment does not serve (HTTP 404)."""

    def __init__(self, message: str, param: str | None = "model", code: str = "model_not_found"):
        super().__init__(message, param, code)


class AdapterError(InvalidInput):
    """A LoRA adapter can't be used: its file is missing, corrupt, or made for another model; ``param`` names
    the adapter."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_adapter"):
        super().__init__(message, param, code)


class PlanError(ZImageError):
    """No staging plan fits the GPU for the asked workload. ``smallest_gib``: what the smallest plan tried needs,
    where the error is that none fitted (None otherwise)."""

    def __init__(self, message: str, *, smallest_gib: float | None = None):
        super().__init__(message)
        self.smallest_gib = smallest_gib


class Overloaded(ZImageError):
    """Temporarily unable to serve (a replica failed, out of memory after retries); retry later."""

    code = "unavailable"


class QueueFull(Overloaded):
    """More images are waiting than the deployment admits; retry later."""

    code = "queue_full"


class RequestTimeout(ZImageError):
    """The images were not ready within the request timeout."""

    code = "timeout"


class NotReady(ZImageError):
    """A replica has no model loaded (the message says why)."""

    code = "not_ready"


class NeedsEmbeddings(ZImageError):
    """A prompt reached a generator replica that holds no text encoder (its plan left no room for one); the
    ingress encodes it on the CPU encoders and sends it again. Replicas' plans differ where their GPUs do."""


def unwrapped(e: BaseException) -> BaseException:
    """Our error as raised in another replica (Ray wraps it in a RayTaskError that is also an instance of its class,
    its message a traceback, and keeps the original as ``cause``); anything else as it is."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, ZImageError) else e


def user_message(e: BaseException) -> str:
    """The user-facing message of our error, also when Ray wrapped it (RayTaskError keeps it as .cause)."""
    while getattr(e, "cause", None) is not None and e.cause is not e:
        e = e.cause
    return str(e.args[0]) if e.args else str(e)
