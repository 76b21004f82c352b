"""JobRunner, the plain class behind the jobs API, over a real job store (a directory): what it keeps, for how long,
how many, and a runner started on a store that a stopped one left (the end-to-end API, with Ray, is in
test_jobs.py). The encoder and generator deployments are the service's handles; here, small async stand-ins."""

import asyncio
import time

import pytest

from zimage_serve.core.errors import QueueFull
from zimage_serve.jobs.store import JobStore
from zimage_serve.serving.jobs import JobRunner
from zimage_serve.serving.service import ImageService
from zimage_serve.settings import AppConfig


class Generators:
    """Stand-ins for the handles: each image takes two steps, and waits at the first until ``release``."""

    def __init__(self):
        self.gate = asyncio.Event()
        self.seeds: list[int] = []

    async def stream(self, request, encoded):
        yield {"step": 1, "total": 2, "preview": None}
        await self.gate.wait()
        self.seeds.append(request.seed)
        yield {"step": 2, "total": 2, "preview": None}
        yield {"result": {"image": f"png of {request.seed}".encode(), "seed": request.seed, "seconds": {}}}

    async def generate(self, request, encoded):
        raise AssertionError("jobs stream their images")

    async def info(self):
        return {"ready": True, "plan": {"encode_on": "cpu"}}


def runner(tmp_path, gens: Generators, **jobs) -> JobRunner:
    config = AppConfig(default_size="64x64", max_side=256, jobs={"dir": str(tmp_path), **jobs})
    service = ImageService(config, encode=lambda request: None, generate=gens.generate, generator_info=gens.info,
                           is_retryable=lambda e: False, generate_stream=gens.stream)
    return JobRunner(config, service)


async def until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_max_jobs_refuses_with_503_until_one_is_forgotten(tmp_path):
    async def main():
        gens = Generators()
        jobs = runner(tmp_path, gens, max_jobs=2, ttl_s=0.2, concurrency=1)
        await jobs.start()
        a = await jobs.submit({"prompt": "a", "seed": 1})
        await jobs.submit({"prompt": "b", "seed": 2})
        with pytest.raises(QueueFull, match="jobs.max_jobs"):
            await jobs.submit({"prompt": "c"})
        gens.gate.set()
        await until(lambda: all(r["status"] == "succeeded" for r in jobs.records.values()))
        await asyncio.sleep(0.3)  # past ttl_s: the ended jobs are forgotten, their files too
        c = await jobs.submit({"prompt": "c", "seed": 3})
        assert set(jobs.records) == {c["id"]} and not (tmp_path / a["id"]).exists()
        await until(lambda: jobs.records[c["id"]]["status"] == "succeeded")

    asyncio.run(main())


def test_a_runner_on_a_stopped_ones_store_runs_its_jobs_again_with_their_seeds(tmp_path):
    async def first():
        gens = Generators()
        jobs = runner(tmp_path, gens, concurrency=1)
        await jobs.start()
        running = await jobs.submit({"prompt": "a", "n": 2})  # a random seed, drawn once
        queued = await jobs.submit({"prompt": "b", "seed": 9})
        await until(lambda: jobs.records[running["id"]]["progress"]["step"] == 1)
        return running, queued  # the loop ends here: the runner stops mid-job, as a killed replica does

    running, queued = asyncio.run(first())
    assert JobStore(str(tmp_path)).record(running["id"])["status"] == "running"

    async def second():
        gens = Generators()
        gens.gate.set()
        jobs = runner(tmp_path, gens, concurrency=1)
        await jobs.start()
        await until(lambda: all(r["status"] == "succeeded" for r in jobs.records.values()))
        done = await jobs.get(running["id"])
        assert [d["seed"] for d in done["result"]["data"]] == [running["seed"], running["seed"] + 1]
        assert gens.seeds == [running["seed"], running["seed"] + 1, 9]  # in the order they were accepted
        assert (await jobs.image(queued["id"], 0)) == (b"png of 9", "image/png")

    asyncio.run(second())


def test_a_cancelled_queued_job_never_runs(tmp_path):
    async def main():
        gens = Generators()
        jobs = runner(tmp_path, gens, concurrency=1)
        await jobs.start()
        first = await jobs.submit({"prompt": "a", "seed": 1})
        second = await jobs.submit({"prompt": "b", "seed": 2})
        assert (await jobs.cancel(second["id"]))["status"] == "cancelled"
        gens.gate.set()
        await until(lambda: jobs.records[first["id"]]["status"] == "succeeded")
        assert gens.seeds == [1] and jobs.records[second["id"]]["started_at"] is None
        assert JobStore(str(tmp_path)).record(second["id"])["status"] == "cancelled"

    asyncio.run(main())
