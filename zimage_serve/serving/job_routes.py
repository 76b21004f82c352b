"""The jobs API's routes (serving/jobs.py runs the jobs): thin, over a JobsClient (the job store deployment's
handle) or a JobRunner. Errors are domain errors, answered in the one error shape by the app's handlers.

POST /v1/jobs (202: the record, queued), GET /v1/jobs/{id} (the record; with the images as b64_json once it
succeeded), GET /v1/jobs/{id}/images/{i} (an image's bytes), GET /v1/jobs/{id}/events (text/event-stream:
job.status, job.progress, then job.succeeded / job.failed / job.cancelled with the record), DELETE /v1/jobs/{id}
(cancel: the record).
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..core.errors import NotFound

JOBS = "/v1/jobs"


def _index(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text):
        raise NotFound(f"no image {text!r}: images are numbered from 0", param="index")
    return int(text)


def job_body(wire) -> dict:
    """``POST /v1/jobs``'s body: a generation's fields, an edit's ``image`` and ``mask`` (base64), a webhook."""
    schema = wire.images.model_json_schema()
    edits = wire.edits.model_json_schema()["properties"]
    text = {"type": "string"}
    extra = {"image": edits["image"], "mask": edits["mask"], "strength": edits["strength"],
             "webhook_url": {**text, "description": "Called once when the job ends (http(s); private addresses refused)."},
             "webhook_secret": {**text, "description": "The Standard Webhooks secret (whsec_...) that signs it."}}
    properties = {k: v for k, v in schema["properties"].items() if k not in ("stream", "partial_images", "progress_events")}
    schema = {**schema, "properties": {**properties, **extra}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def add_job_routes(app: FastAPI, jobs, read_json, streamed, refusals: dict, wire) -> None:
    """The jobs routes on ``app`` (``read_json``, ``streamed``: the app's body reader and SSE response; ``wire``: its
    wire types); with ``jobs`` None, each says the API is off."""
    if jobs is None:
        @app.api_route(JOBS, methods=["GET", "POST"], include_in_schema=False)
        @app.api_route(JOBS + "/{rest:path}", methods=["GET", "POST", "DELETE"], include_in_schema=False)
        async def off(rest: str = ""):
            raise NotFound("the jobs API is off on this deployment (the app's jobs.enabled is false)",
                           code="jobs_disabled")
        return
    record = {"description": "The job's record.", "content": {"application/json": {"schema": {"type": "object"}}}}

    @app.post(JOBS, status_code=202, responses={202: record, **refusals}, openapi_extra=job_body(wire))
    async def submit_job(request: Request):
        accepted = await jobs.submit(await read_json(request))
        where = f"{request.scope.get('root_path', '')}{JOBS}/{accepted['id']}"  # (under the app's route prefix)
        return JSONResponse(accepted, status_code=202, headers={"Location": where})

    @app.get(JOBS + "/{job_id}", responses={200: record, **refusals})
    async def get_job(job_id: str):
        return await jobs.get(job_id)

    @app.get(JOBS + "/{job_id}/images/{index}", response_class=Response, responses=refusals)
    async def job_image(job_id: str, index: str):
        data, media_type = await jobs.image(job_id, _index(index))
        return Response(data, media_type=media_type)

    @app.get(JOBS + "/{job_id}/events", responses=refusals)
    async def job_events(job_id: str):
        return await streamed(jobs.events(job_id))

    @app.delete(JOBS + "/{job_id}", responses={200: record, **refusals})
    async def cancel_job(job_id: str):
        return await jobs.cancel(job_id)
