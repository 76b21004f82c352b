"""Async jobs on the real application (Ray Serve, real HTTP, the tiny checkpoint, a real webhook receiver):
submit, follow (GET, events), the images, cancel (queued and running), refusals, and the two failures a job
must outlive: its ingress replica killed mid-job, and its job store replica killed mid-job (the job completes and
its webhook fires exactly once, with a valid signature)."""

import base64
import json
import time

import httpx
import pytest
from standardwebhooks import Webhook

from conftest import GENERATOR_ENCODES, WebhookReceiver, deploy, tiny_app_config, undeploy

SECRET = "whsec_" + base64.b64encode(b"zimage-serve job webhooks test!!").decode()
SLOW = {"size": "256x256", "num_inference_steps": 40}  # a fraction of a second to seconds on the tiny model
# some 5 s alone on one core (4 images of 512x512 in one batch, 50 steps): a job to cancel while it runs, which stops
# at its next step
CANCELLABLE = {"size": "512x512", "num_inference_steps": 50, "n": 4}
# about a second alone: a replica killed once 2 steps are done dies mid-job, never between its webhook's delivery and
# the record of it (at 256x256 the job could end first, and its webhook, sent again by the next replica, came twice)
MID_JOB = {"size": "512x512", "num_inference_steps": 50}


@pytest.fixture(scope="module")
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def jobs_url(serve_cluster, tiny_path, tmp_path_factory):
    config = tiny_app_config(tiny_path, max_side=512, jobs={"enabled": True, "dir": str(tmp_path_factory.mktemp("jobs")),
                                              "concurrency": 1, "webhook_allow": ["127.0.0.0/8"],
                                              "webhook_backoff_s": 0.2},
                             generator=GENERATOR_ENCODES)  # the store's ImageService is the ingress's; the CPU encoders: test_app.py's main app
    yield deploy(serve_cluster, "jobs", config)
    undeploy("jobs")


def submit(url, **body) -> dict:
    r = httpx.post(f"{url}/v1/jobs", json={"prompt": "a lighthouse", "size": "64x64", **body}, timeout=60)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/jobs/v1/jobs/{r.json()['id']}"  # under the app's route prefix
    return r.json()


def wait_for(url, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            r = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10)
            if r.status_code == 200 and r.json()["status"] in statuses:
                return r.json()
        except httpx.HTTPError:  # an ingress being replaced
            pass
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not {statuses} within {timeout}s")


def delivered(receiver, job_id, timeout=30) -> list[dict]:
    """The webhook deliveries of the job (after they stopped coming), each checked against the secret."""
    deadline = time.time() + timeout
    while not receiver.for_job(job_id) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # a second delivery would come within this
    return [Webhook(SECRET).verify(body, headers) for headers, body in receiver.for_job(job_id)]


def test_a_job_runs_and_its_result_is_the_synchronous_routes(jobs_url, receiver):
    job = submit(jobs_url, seed=11, n=2, webhook_url=receiver.url, webhook_secret=SECRET)
    assert job["status"] == "queued" and "webhook_secret" not in job
    done = wait_for(jobs_url, job["id"])
    assert done["status"] == "succeeded" and done["progress"] == {"step": 8, "total": 8, "images_done": 2, "n": 2}
    sync = httpx.post(f"{jobs_url}/v1/images/generations", json={"prompt": "a lighthouse", "size": "64x64", "seed": 11,
                                                                 "n": 2}, timeout=60).json()
    assert [d["b64_json"] for d in done["result"]["data"]] == [d["b64_json"] for d in sync["data"]]
    assert [d["seed"] for d in done["result"]["data"]] == [11, 12]
    image = httpx.get(f"{jobs_url}/v1/jobs/{job['id']}/images/1")
    assert image.headers["content-type"] == "image/png"
    assert image.content == base64.b64decode(sync["data"][1]["b64_json"])
    (hook,) = delivered(receiver, job["id"])
    assert hook["id"] == job["id"] and hook["status"] == "succeeded" and "webhook_secret" not in hook
    assert hook["result"]["data"][0]["url"] == f"/v1/jobs/{job['id']}/images/0"
    assert httpx.get(f"{jobs_url}/v1/jobs/{job['id']}").json()["webhook"]["status"] == "delivered"


def test_an_edit_job_is_the_edits_route_image(jobs_url):
    import io

    from conftest import picture, square_mask

    def b64(image) -> str:
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return base64.b64encode(buf.getvalue()).decode()

    edit = {"prompt": "a lighthouse", "image": b64(picture(64, 64)), "mask": b64(square_mask(64, 64)), "seed": 4}
    job = submit(jobs_url, **edit)
    assert job["kind"] == "edit"
    done = wait_for(jobs_url, job["id"])
    sync = httpx.post(f"{jobs_url}/v1/images/edits", json=edit, timeout=60).json()
    assert done["status"] == "succeeded" and done["result"]["data"][0]["b64_json"] == sync["data"][0]["b64_json"]


def test_events_stream_status_each_step_then_the_end(jobs_url):
    job = submit(jobs_url, seed=3, **SLOW)  # still running when its events are asked for (4 steps at 64x64 weren't)
    with httpx.stream("GET", f"{jobs_url}/v1/jobs/{job['id']}/events", timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    types = [e["type"] for e in events]
    assert types[0] == "job.status" and types[-1] == "job.succeeded"
    steps = [e["step"] for e in events if e["type"] == "job.progress"]  # from when the stream began
    assert steps == sorted(steps) and len(steps) >= 2 and steps[-1] == SLOW["num_inference_steps"]
    assert events[-2]["images_done"] == 1
    # a finished job's events: its end, at once
    with httpx.stream("GET", f"{jobs_url}/v1/jobs/{job['id']}/events", timeout=60) as r:
        assert [json.loads(line[5:])["type"] for line in r.iter_lines() if line.startswith("data:")] == ["job.succeeded"]


def test_cancel_a_running_and_a_queued_job(jobs_url, receiver):
    batches = httpx.get(f"{jobs_url}/readyz", timeout=30).json()["batches_run"]
    running = submit(jobs_url, seed=1, webhook_url=receiver.url, webhook_secret=SECRET, **CANCELLABLE)
    queued = submit(jobs_url, seed=2, **CANCELLABLE)  # concurrency 1: it waits for the first
    deadline = time.time() + 60
    while httpx.get(f"{jobs_url}/v1/jobs/{running['id']}").json()["progress"]["step"] < 1:
        assert time.time() < deadline
        time.sleep(0.1)
    r = httpx.delete(f"{jobs_url}/v1/jobs/{queued['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = httpx.delete(f"{jobs_url}/v1/jobs/{running['id']}")
    assert r.json()["status"] == "cancelled"
    stopped = httpx.get(f"{jobs_url}/v1/jobs/{running['id']}").json()
    assert stopped["progress"]["step"] < 50 and stopped["result"] is None  # it stopped mid-way
    assert httpx.get(f"{jobs_url}/v1/jobs/{queued['id']}").json()["started_at"] is None  # never ran
    # the generator stopped the image at its next step: its batch never ended (a next job's runs after it would have)
    assert wait_for(jobs_url, submit(jobs_url, seed=3)["id"])["status"] == "succeeded"
    assert httpx.get(f"{jobs_url}/readyz", timeout=30).json()["batches_run"] == batches + 1
    (hook,) = delivered(receiver, running["id"])
    assert hook["status"] == "cancelled"
    assert httpx.get(f"{jobs_url}/v1/jobs/{running['id']}/images/0").status_code == 404
    # an ended job stays as it ended
    assert httpx.delete(f"{jobs_url}/v1/jobs/{running['id']}").json()["status"] == "cancelled"


@pytest.mark.parametrize("body, status, param, code", [
    ({"size": "65x64"}, 400, "size", None),
    ({"stream": True}, 400, "stream", None),
    ({"webhook_url": "http://10.0.0.7/hook", "webhook_secret": SECRET}, 400, "webhook_url", "webhook_url_refused"),
    ({"webhook_url": "ftp://example.com/hook", "webhook_secret": SECRET}, 400, "webhook_url", "invalid_webhook_url"),
    ({"webhook_url": "https://example.com/hook"}, 400, "webhook_secret", None),
    ({"webhook_url": "https://example.com/hook", "webhook_secret": "s3cret"}, 400, "webhook_secret",
     "invalid_webhook_secret"),
    ({"image": "not base64!"}, 400, "image", "invalid_image"),
])
def test_bad_jobs_are_refused_before_they_are_accepted(jobs_url, body, status, param, code):
    r = httpx.post(f"{jobs_url}/v1/jobs", json={"prompt": "x", **body}, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    if code:
        assert r.json()["error"]["code"] == code


def test_unknown_jobs_and_images_are_404(jobs_url):
    for path in ("/v1/jobs/job_0123", "/v1/jobs/../etc/passwd", "/v1/jobs/job_0123/events", "/v1/jobs/job_0123/images/0"):
        r = httpx.get(f"{jobs_url}{path}")
        assert r.status_code == 404 and "error" in r.json(), path
    assert httpx.delete(f"{jobs_url}/v1/jobs/job_0123").status_code == 404


def _replica(app: str, deployment: str):
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"{app}#{deployment}#" in a["name"]]
    assert len(names) == 1, names
    return ray.get_actor(names[0], namespace="serve")


@pytest.mark.parametrize("deployment", ["Ingress", "Jobs"])
def test_a_job_outlives_its_replica_killed_mid_job(jobs_url, receiver, deployment):
    """The ingress holds no job; the job store's replica, killed, comes back, loads its store and runs the job again
    (the same seed: the same image). Either way the job succeeds and its webhook fires once."""
    import ray

    job = submit(jobs_url, seed=5, webhook_url=receiver.url, webhook_secret=SECRET, **MID_JOB)
    deadline = time.time() + 60
    while httpx.get(f"{jobs_url}/v1/jobs/{job['id']}").json()["progress"]["step"] < 2:
        assert time.time() < deadline
        time.sleep(0.1)
    ray.kill(_replica("jobs", deployment), no_restart=True)
    done = wait_for(jobs_url, job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    sync = httpx.post(f"{jobs_url}/v1/images/generations", json={"prompt": "a lighthouse", "seed": 5, **{
        "size": MID_JOB["size"], "num_inference_steps": MID_JOB["num_inference_steps"]}}, timeout=120).json()
    assert done["result"]["data"][0]["b64_json"] == sync["data"][0]["b64_json"]
    (hook,) = delivered(receiver, job["id"], timeout=60)
    assert hook["status"] == "succeeded"
