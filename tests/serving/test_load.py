"""A CI-sized run of bench/loadtest.py's client against the real app: every request answered."""

import asyncio
import sys
from pathlib import Path

from conftest import GENERATOR_ENCODES, deploy, tiny_app_config, undeploy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from loadtest import drive  # noqa: E402


def test_bounded_queue_answers_every_request_with_200_or_503(serve_cluster, tiny_path):
    url = deploy(serve_cluster, "ciload", tiny_app_config(tiny_path, generator={
        "max_queued_requests": 8, "batch_wait_timeout_s": 0.01, **GENERATOR_ENCODES}))
    s = asyncio.run(drive(url, requests=200, clients=32, timeout=120))
    assert s["answered"] == 200 and s["connection_errors"] == 0, s
    assert set(map(int, s["by_status"])) <= {200, 503} and s["by_status"].get(200, 0) > 0, s["by_status"]
    assert sum(s["by_status"].values()) == 200 and s["bad_images"] == 0 and s["retry_after_missing"] == 0
    undeploy("ciload")


def test_unbounded_queue_with_timeout_never_hangs_past_it(serve_cluster, tiny_path):
    url = deploy(serve_cluster, "ciload2", tiny_app_config(tiny_path, request_timeout_s=2, generator={
        "max_queued_requests": -1, "batch_wait_timeout_s": 0.01, **GENERATOR_ENCODES}))
    s = asyncio.run(drive(url, requests=96, clients=32, timeout=120))
    assert s["answered"] == 96 and s["connection_errors"] == 0, s
    assert set(map(int, s["by_status"])) <= {200, 504}, s["by_status"]
    assert s["latency_all_s"]["max"] <= 2 + 3, s["latency_all_s"]  # a hang would be the client's 120 s
    undeploy("ciload2")
