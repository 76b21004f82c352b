"""Async jobs: work that outlives one HTTP connection. ``POST /v1/jobs`` takes a generation's body (with an
``image``, and optionally a ``mask``, as base64: an edit, as in the edits route's JSON form) plus an optional
``webhook_url`` and ``webhook_secret``, checks it as the synchronous routes do, keeps it in the job store
(jobs/store.py: a directory, or a bucket) and answers at once; :class:`JobRunner` runs it through the same
:class:`ImageService` as the routes, ``jobs.concurrency`` jobs at a time.

A job's record says its ``status`` (queued, running, succeeded, failed, cancelled), its ``progress`` ({step,
total, images_done, n}), and when it ends its ``result`` (each image's seed and URL; GET adds the images as
``b64_json``: the synchronous route's body) or its ``error`` (the one error shape). Every change is written to
the store before it is told: a store replica that restarts (or moves) loads every record and runs again the
jobs that had not ended (with the seeds they were given: the same images), and sends the webhooks still owed.

The webhook (jobs/webhooks.py): the record, POSTed once when the job ends (cancelled included), signed per
Standard Webhooks, retried with backoff, never in the way of generation. Its state is in the record: a
delivered webhook is never sent again (if the replica dies between the receiver's 2xx and the record's write,
it is, with the same ``webhook-id``, which receivers dedupe on).

:class:`JobsDeployment` is the runner as a Serve deployment (one replica: it owns its store); the ingress calls it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
from typing import AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle

from ..core.errors import InvalidInput, NotFound, NotReady, Overloaded, QueueFull
from ..core.formats import image_format
from ..core.request import GenerationRequest
from ..jobs.store import TERMINAL, JobStore
from ..jobs.webhooks import WebhookSender, check_secret, check_url, parse_allow
from ..settings import DRAIN_POLL_S, AppConfig, webhook_secret
from .http import api_error
from .ingress import image_service
from .service import ImageService

log = logging.getLogger("zimage_serve")
RETRY_S = (0.5, 1, 2, 4, 8, 10)  # waits between tries when the generators are full or not ready (then 10 s)


def _public(record: dict) -> dict:
    """A record as clients see it: without its webhook's secret."""
    return {k: v for k, v in record.items() if k != "webhook_secret"}


class JobRunner:
    """The jobs of one store: accepted, run, cancelled, followed, kept for ``jobs.ttl_s``, their webhooks sent."""

    def __init__(self, config: AppConfig, service: ImageService, store: JobStore | None = None):
        opts = config.jobs
        self.config, self.service, self.opts = config, service, opts
        self.store = store or JobStore(opts.store_location())
        self.allow = parse_allow(opts.webhook_allow)
        self.sender = WebhookSender(self.allow, opts.webhook_attempts, opts.webhook_backoff_s, opts.webhook_timeout_s)
        self.records: dict[str, dict] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.listeners: dict[str, set[asyncio.Queue]] = {}
        self.slots = asyncio.Semaphore(opts.concurrency)
        self.server_secret = webhook_secret(config)  # signs the webhooks of jobs that give none
        self._saving = asyncio.Lock()  # one record write at a time, in the order they were asked for
        self._background: set[asyncio.Task] = set()  # webhooks on their way (held: asyncio keeps tasks weakly)

    async def start(self) -> None:
        """Load the store's jobs: run again those that had not ended, send the webhooks still owed."""
        for record in await asyncio.to_thread(self.store.load_all):
            self.records[record["id"]] = record
        await self._purge()
        resumed = [r for r in self.records.values() if r["status"] not in TERMINAL]
        for record in resumed:
            record["status"] = "queued"
            self.tasks[record["id"]] = asyncio.ensure_future(self._run(record))
        owed = [r for r in self.records.values() if r["status"] in TERMINAL and _owed(r)]
        for record in owed:
            self._webhook_later(record)
        log.info("job store %s: %d jobs kept, %d resumed, %d webhooks owed", self.store.location, len(self.records),
                 len(resumed), len(owed))

    # ---- the API --------------------------------------------------------------------------------------

    async def submit(self, body) -> dict:
        """Accept a job (checked as the synchronous routes check a body): its record, queued."""
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object", code="invalid_body")
        fields = dict(body)
        url, secret = fields.pop("webhook_url", None), fields.pop("webhook_secret", None)
        if fields.get("stream", False) is not False:
            raise InvalidInput("a job is not streamed: follow it at GET /v1/jobs/{id}/events", param="stream")
        webhook = self._webhook(url, secret)
        edit = fields.get("image") is not None
        request, _ = await asyncio.to_thread(self.service.edit_parts if edit else self.service.request_from_images,
                                             fields)
        fields["seed"] = request.seed  # as drawn: a job run again makes the same images
        if len(self.records) >= self.opts.max_jobs:
            await self._purge()  # (also every minute: purge_every)
        if len(self.records) >= self.opts.max_jobs:
            raise QueueFull(f"{self.opts.max_jobs} jobs are kept (jobs.max_jobs); retry later")
        record = {"id": JobStore.new_id(), "object": "job", "status": "queued", "kind": "edit" if edit else "generation",
                  "model": request.adapter or self.config.model_name, "prompt": request.prompt, "n": request.n,
                  "size": fields.get("size", "auto"), "seed": request.seed, "created_at": time.time(),
                  "started_at": None, "finished_at": None,
                  "progress": {"step": 0, "total": request.steps, "images_done": 0, "n": request.n},
                  "result": None, "error": None, "webhook": webhook}
        if secret is not None:  # the job's own (kept, to sign its webhook after a restart); else the server's, then
            record["webhook_secret"] = secret
        # accepted whole or not at all, even if the client leaves meanwhile (Serve then cancels this call)
        await asyncio.shield(self._accept(record, fields))
        return _public(record)

    async def _accept(self, record: dict, body: dict) -> None:
        await asyncio.to_thread(self.store.create, record, body)
        self.records[record["id"]] = record
        self.tasks[record["id"]] = asyncio.ensure_future(self._run(record))

    async def get(self, job_id: str) -> dict:
        """The job's record; when it succeeded, its ``result`` is the synchronous route's body (``data[i].b64_json``)."""
        record = _public(self._record(job_id))
        if record["status"] == "succeeded":
            ext = image_format(record["result"]["output_format"]).extension
            data = []
            for i, item in enumerate(record["result"]["data"]):
                image = await asyncio.to_thread(self.store.image, job_id, i, ext)
                data.append({**item, "b64_json": base64.b64encode(image or b"").decode()})
            record["result"] = {**record["result"], "data": data}
        return record

    async def image(self, job_id: str, index: int) -> tuple[bytes, str]:
        """(bytes, media type) of the job's image ``index``."""
        record = self._record(job_id)
        if record["status"] != "succeeded" or not 0 <= index < len(record["result"]["data"]):
            raise NotFound(f"job {job_id} has no image {index} ({record['status']})", param="index")
        fmt = image_format(record["result"]["output_format"])
        data = await asyncio.to_thread(self.store.image, job_id, index, fmt.extension)
        if data is None:
            raise NotFound(f"job {job_id}'s image {index} is no longer kept", param="index")
        return data, fmt.media_type

    async def cancel(self, job_id: str) -> dict:
        """Cancel the job: a queued one never runs, a running one stops at its next step. An ended job stays as
        it ended."""
        record = self._record(job_id)
        if record["status"] not in TERMINAL:
            record["status"] = "cancelled"  # before the task hears of it: it ends the job as cancelled
            task = self.tasks.get(job_id)
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task})
            self.tasks.pop(job_id, None)
            await self._finish(record)  # (a task cancelled before it began ends nothing itself)
        return _public(record)

    async def events(self, job_id: str) -> AsyncIterator[dict]:
        """The job's events: ``job.status`` now and at each change, ``job.progress`` after each step, and last
        ``job.<how it ended>`` with its record."""
        record = self._record(job_id)
        queue: asyncio.Queue = asyncio.Queue()
        self.listeners.setdefault(job_id, set()).add(queue)
        try:
            if record["status"] in TERMINAL:
                yield {"type": f"job.{record['status']}", **_public(record)}
                return
            yield _status_event(record)
            while True:
                event = await queue.get()
                yield event
                if event["type"] in {f"job.{s}" for s in TERMINAL}:
                    return
        finally:
            followers = self.listeners.get(job_id, set())
            followers.discard(queue)
            if not followers:
                self.listeners.pop(job_id, None)

    # ---- running a job --------------------------------------------------------------------------------

    async def _run(self, record: dict) -> None:
        job_id = record["id"]
        try:
            async with self.slots:
                if record["status"] != "queued":
                    return
                body = await asyncio.to_thread(self.store.body, job_id)
                edit = record["kind"] == "edit"
                request, uploads = await asyncio.to_thread(
                    self.service.edit_parts if edit else self.service.request_from_images, body)
                request = request.replace(partial_images=0)  # a job reports progress, never previews: none made
                record.update(status="running", started_at=time.time())
                await self._save(record)
                self._tell(job_id, _status_event(record))
                request, results = await self._generate(record, request, uploads)
                ext = image_format(request.output_format).extension
                for i, r in enumerate(results):
                    await asyncio.to_thread(self.store.put_image, job_id, i, r["image"], ext)
                record.update(status="succeeded", result={
                    "created": int(time.time()), "output_format": request.output_format, "size": request.size,
                    "seed": request.seed, "model": record["model"],
                    "data": [{"seed": r["seed"], "url": f"/v1/jobs/{job_id}/images/{i}"} for i, r in enumerate(results)]})
        except asyncio.CancelledError:
            if record["status"] != "cancelled":  # the replica is stopping: the job runs again where it restarts
                raise
        except Exception as e:
            e = api_error(e)
            record.update(status="failed", error={"message": e.message, "type": e.type, "param": e.param,
                                                  "code": e.code})
        finally:
            self.tasks.pop(job_id, None)
        await self._finish(record)

    async def _finish(self, record: dict) -> None:
        """The job ended (its status says how): written, told, and its webhook on its way."""
        if record["finished_at"] is not None:
            return
        record["finished_at"] = time.time()
        try:
            await self._save(record)
        except Exception:  # the store failed: followers and the webhook are told all the same
            log.exception("job %s: its end (%s) could not be written to the store", record["id"], record["status"])
        self._tell(record["id"], {"type": f"job.{record['status']}", **_public(record)})
        log.info("job %s %s", record["id"], record["status"])
        if record["webhook"] is not None:
            self._webhook_later(record)

    async def _generate(self, record: dict, request: GenerationRequest, uploads) -> tuple:
        """The job's images, its progress told as they denoise; a full queue or no ready generator is waited out
        (retried with backoff, while the job would be kept: ``jobs.ttl_s``), as a job's client waits anyway."""
        progress = record["progress"]

        async def on_step(image: GenerationRequest, event: dict) -> None:
            if "result" in event:
                progress["images_done"] += 1
            else:
                progress.update(step=event["step"], total=event["total"])
            self._tell(record["id"], {"type": "job.progress", "id": record["id"], "image_index": image.seed - request.seed,
                                      **progress})

        deadline = time.monotonic() + self.opts.ttl_s
        for attempt in itertools.count():
            try:
                return await self.service.run(request, uploads, on_step)
            except (Overloaded, NotReady):
                wait = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                if time.monotonic() + wait > deadline:
                    raise
                await asyncio.sleep(wait)

    # ---- keeping --------------------------------------------------------------------------------------

    def _record(self, job_id: str) -> dict:
        record = self.records.get(job_id) if isinstance(job_id, str) else None
        if record is None:
            raise NotFound(f"no job {job_id!r} (unknown, or no longer kept: jobs are kept {self.opts.ttl_s:g}s after "
                           "they end)", param="id")
        return record

    def _webhook(self, url, secret) -> dict | None:
        if url is None:
            if secret is not None:
                raise InvalidInput("webhook_secret needs a webhook_url", param="webhook_secret")
            return None
        if not isinstance(url, str):
            raise InvalidInput("webhook_url must be a string", param="webhook_url")
        check_url(url, self.allow)
        if secret is None and self.server_secret is None:
            raise InvalidInput("webhook_url needs a webhook_secret (whsec_...): give one, or set the server's "
                               "jobs.webhook_secret", param="webhook_secret")
        if secret is not None:
            check_secret(secret if isinstance(secret, str) else "")
        return {"url": url, "status": "pending", "attempts": 0, "last_status": None, "error": None}

    def _webhook_later(self, record: dict) -> None:
        task = asyncio.ensure_future(self._send_webhook(record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_webhook(self, record: dict) -> None:
        hook = record["webhook"]
        secret = record.get("webhook_secret") or self.server_secret
        if secret is None:
            hook.update(status="failed", error="no webhook secret: the job gave none, and the server has none now")
            await self._save(record)
            return
        delivery = await self.sender.deliver(hook["url"], secret, record["id"], _public(record))
        hook.update(status="delivered" if delivery.delivered else "failed", attempts=delivery.attempts,
                    last_status=delivery.status, error=delivery.error)
        await self._save(record)

    async def _save(self, record: dict) -> None:
        """Write the record as it is now (a copy: later changes are the next write's), after the writes asked for
        before it; a write begun is finished even if its caller is cancelled meanwhile (a cancelled job's
        "running" never lands after its "cancelled")."""
        if record["id"] not in self.records:  # (one purged meanwhile)
            return
        snapshot = json.loads(json.dumps(record))

        async def write():
            async with self._saving:
                await asyncio.to_thread(self.store.save, snapshot)

        await asyncio.shield(asyncio.ensure_future(write()))

    def _tell(self, job_id: str, event: dict) -> None:
        for queue in self.listeners.get(job_id, ()):
            queue.put_nowait(event)

    async def _purge(self) -> None:
        """Forget the jobs that ended over ``ttl_s`` ago, and their images (a store that fails is logged: the
        jobs are forgotten next time)."""
        for job_id in self.store.expired(self.records.values(), self.opts.ttl_s):
            self.records.pop(job_id, None)
            self.listeners.pop(job_id, None)
            try:
                await asyncio.to_thread(self.store.delete, job_id)
            except Exception:
                log.exception("job %s: its files could not be deleted from the store", job_id)

    async def purge_every(self, seconds: float = 60.0) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self._purge()


def _owed(record: dict) -> bool:
    return record.get("webhook") is not None and record["webhook"]["status"] == "pending"


def _status_event(record: dict) -> dict:
    return {"type": "job.status", "id": record["id"], "status": record["status"], "progress": record["progress"]}


@serve.deployment(name="Jobs", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000,
                  graceful_shutdown_wait_loop_s=DRAIN_POLL_S)
class JobsDeployment(JobRunner):
    """The job store's replica (one: it owns its store): a JobRunner whose jobs go through handles to the encoders
    and generators as the ingress's requests do; its methods are the runner's."""

    async def __init__(self, encoder: DeploymentHandle | None, generator: DeploymentHandle, config: dict):
        config = AppConfig.model_validate(config)
        super().__init__(config, image_service(config, encoder, generator))
        await self.start()
        self._purging = asyncio.ensure_future(self.purge_every())
