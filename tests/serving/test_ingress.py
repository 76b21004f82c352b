"""The ingress recognises Serve's refusals by their exception types, never by names: each maps to its domain
error (core/errors.py), a look-alike class of ours does not, and a replica's death is retried."""

import pytest
import ray.exceptions as rex
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException, ReplicaUnavailableError

from zimage_serve.core.errors import Overloaded, QueueFull
from zimage_serve.serving.ingress import retryable, serve_error


class FakeBackPressureThing(Exception):
    """Named like Serve's BackPressureError, but not one."""


class DeploymentUnavailableLookalike(Exception):
    pass


class ReplicaUnavailableToo(RuntimeError):
    pass


def _task_error(cause: BaseException) -> BaseException:
    """What a Ray call raises when the remote side raised ``cause``: a RayTaskError that is also a ``cause``."""
    return rex.RayTaskError("generate", "Traceback: ...", cause).as_instanceof_cause()


def _wrapped_death() -> RayServeException:
    """Serve's router wraps an encoder's death seen by the generator: a RayServeException caused by it."""
    try:
        try:
            raise rex.ActorDiedError()
        except rex.ActorDiedError as cause:
            raise RayServeException("an upstream actor died before finishing a dependent task") from cause
    except RayServeException as e:
        return e


SERVE_ERRORS = {
    "backpressure": (BackPressureError(num_queued_requests=65, max_queued_requests=64), QueueFull, "queue_full"),
    "backpressure, 429": (BackPressureError(3, 2, status_code=429, retry_after_s=1.0), QueueFull, "queue_full"),
    "backpressure from a replica": (_task_error(BackPressureError(9, 8)), QueueFull, "queue_full"),
    "deployment unavailable": (DeploymentUnavailableError(DeploymentID(name="Generator", app_name="zimage")),
                               Overloaded, "unavailable"),
    "replica unavailable": (ReplicaUnavailableError("Generator#abc123"), Overloaded, "unavailable"),
    "actor died": (rex.ActorDiedError(), Overloaded, "unavailable"),
    "actor unavailable": (rex.ActorUnavailableError("the replica's node is unreachable", None), Overloaded, "unavailable"),
    "worker crashed": (rex.WorkerCrashedError(), Overloaded, "unavailable"),
    "node died": (rex.NodeDiedError("the node is gone"), Overloaded, "unavailable"),
    "death wrapped by Serve": (_wrapped_death(), Overloaded, "unavailable"),
}


@pytest.mark.parametrize("name", list(SERVE_ERRORS))
def test_each_serve_error_maps_by_type_to_its_domain_error(name):
    error, expected, code = SERVE_ERRORS[name]
    mapped = serve_error(error)
    assert type(mapped) is expected and mapped.code == code, (name, mapped)
    assert str(mapped)  # a message for the user, never Serve's own text
    assert "num_queued_requests" not in str(mapped) and "abc123" not in str(mapped)


@pytest.mark.parametrize("error", [FakeBackPressureThing("queue full?"), DeploymentUnavailableLookalike(),
                                   ReplicaUnavailableToo("no"), RayServeException("a bad request"),
                                   ValueError("BackPressure"), _task_error(ValueError("Unavailable"))],
                         ids=lambda e: type(e).__name__)
def test_look_alikes_and_other_errors_are_not_serve_refusals(error):
    assert serve_error(error) is None
    assert not retryable(error)


def test_only_deaths_are_retried():
    assert retryable(rex.ActorDiedError()) and retryable(_wrapped_death()) and retryable(rex.WorkerCrashedError())
    assert not retryable(BackPressureError(1, 1))  # a full queue is answered, not retried
    assert not retryable(ReplicaUnavailableError("Generator#x"))
