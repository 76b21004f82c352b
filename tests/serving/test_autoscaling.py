"""Generators autoscale with load on real Serve: from zero for the first request, up under load (one logical GPU
each), and back down to zero afterwards."""

import io
import threading
import time

import httpx
from PIL import Image
from ray import serve

from conftest import GENERATOR_ENCODES, deploy, max_pixel_diff, stock_image, tiny_app_config, undeploy


def _running(app: str) -> int:
    status = serve.status().applications[app].deployments["Generator"]
    return status.replica_states.get("RUNNING", 0)


def _until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.25)
    return condition()


def test_generators_scale_from_zero_up_under_load_and_back_to_zero(serve_cluster, tiny_path, stock_pipe):
    url = deploy(serve_cluster, "auto", tiny_app_config(tiny_path, generator={
        # 6 clients: 6 requests in flight, 1 a replica wanted (2 at most); 4 slots a replica, so that with 2
        # replicas the info calls below find a free slot instead of retrying behind the clients' requests
        **GENERATOR_ENCODES, "num_gpus": 1, "max_batch_size": 1, "max_ongoing_requests": 4, "batch_wait_timeout_s": 0,
        "autoscaling": {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0,
                        "downscale_delay_s": 2, "downscale_to_zero_delay_s": 2, "metrics_interval_s": 0.5,
                        "look_back_period_s": 1}}))

    # scaled to zero: the app is ready, and asking it so (or for its models) starts no generator
    assert _until(lambda: httpx.get(f"{url}/readyz", timeout=30).status_code == 200, 60)
    ready = httpx.get(f"{url}/readyz", timeout=30).json()
    assert ready["replicas"] == 0 and "scaled_to_zero" in ready, ready
    assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 200
    time.sleep(2)  # the autoscaler's metrics every 0.5 s: a probe that woke a generator would show by now
    assert _running("auto") == 0

    # the first request waits while a replica starts, and gets the stock image
    t = time.monotonic()
    r = httpx.post(f"{url}/generate", json={"prompt": "from zero", "width": 64, "height": 64, "seed": 3}, timeout=120)
    waited = time.monotonic() - t
    assert r.status_code == 200, r.text
    assert max_pixel_diff(Image.open(io.BytesIO(r.content)), stock_image(stock_pipe, "from zero", 3, 64, 64)) <= 1
    info = httpx.get(f"{url}/readyz", timeout=30).json()
    assert info["ready"] and info["plan"] and info["start"]["total_s"] < waited  # the replica it started

    # up under load, each replica on a logical GPU of its own, nothing lost
    stop, codes = threading.Event(), []

    def client(i):
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                r = c.post(f"{url}/generate", json={"prompt": "load", "width": 64, "height": 64,
                                                    "num_inference_steps": 30, "seed": i})
                codes.append(r.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        assert _until(lambda: _running("auto") == 2, 90), "no replica was added under load"
        handle = serve.get_deployment_handle("Generator", app_name="auto")
        infos = {}  # pid -> CUDA_VISIBLE_DEVICES, until both replicas have answered (the router picks one a call)
        deadline = time.monotonic() + 60
        while len(infos) < 2 and time.monotonic() < deadline:
            for response in [handle.info.remote() for _ in range(4)]:
                info = response.result()
                infos[info["pid"]] = info["cuda_visible_devices"]
        assert len(infos) == 2, infos
        assert len(set(infos.values())) == 2 and None not in infos.values(), infos  # a logical GPU each
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert codes and set(codes) == {200}, set(codes)  # nothing lost while scaling

    # idle: down to one, then to none
    assert _until(lambda: _running("auto") == 0, 90), "the idle replicas were not removed"
    assert httpx.get(f"{url}/readyz", timeout=30).json()["replicas"] == 0
    undeploy("auto")
