"""Domain errors keep their fields across Ray handles (pickling), and a user message survives Ray's wrapping."""

import pickle

import pytest

from zimage_serve.core.errors import InvalidInput, NotReady, QueueFull, RequestTimeout, user_message


@pytest.mark.parametrize("error", [InvalidInput("n must be at most 4", param="n", code="invalid_value"),
                                   QueueFull("queue full"), NotReady("loading"), RequestTimeout("late")])
def test_errors_round_trip_with_their_fields(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error) and copy.code == error.code
    assert getattr(copy, "param", None) == getattr(error, "param", None)


def test_user_message_unwraps_a_cause():
    class Wrapped(Exception):  # Ray's RayTaskError keeps the original as .cause
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last): ...")
            self.cause = cause

    assert user_message(Wrapped(InvalidInput("seed must be between 0 and 9"))) == "seed must be between 0 and 9"
