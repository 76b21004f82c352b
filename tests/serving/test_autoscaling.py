"""Generators autoscale with load on real Serve: up under load, down afterwards; one logical GPU each."""

import threading
import time

import httpx
from ray import serve

from conftest import deploy, tiny_app_config, undeploy


def _running(app: str) -> int:
    status = serve.status().applications[app].deployments["Generator"]
    return status.replica_states.get("RUNNING", 0)


def test_generator_scales_up_under_load_and_back_down(serve_cluster, tiny_path):
    url = deploy(serve_cluster, "auto", tiny_app_config(tiny_path, generator={
        # 6 clients: 6 requests in flight, 1 a replica wanted (2 at most); 4 slots a replica, so that with 2
        # replicas the info calls below find a free slot instead of retrying behind the clients' requests
        "num_gpus": 1, "max_batch_size": 1, "max_ongoing_requests": 4, "batch_wait_timeout_s": 0,
        "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0,
                        "downscale_delay_s": 2, "metrics_interval_s": 0.5, "look_back_period_s": 1}}))
    assert _running("auto") == 1
    stop, codes = threading.Event(), []

    def client(i):
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                r = c.post(f"{url}/generate", json={"prompt": "load", "width": 256, "height": 256,
                                                    "num_inference_steps": 30, "seed": i})
                codes.append(r.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 90
        while _running("auto") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _running("auto") == 2, "no replica was added under load"
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
    deadline = time.monotonic() + 90
    while _running("auto") > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _running("auto") == 1, "the extra replica was not removed after the load"
    undeploy("auto")
