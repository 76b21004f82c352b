"""The batch job's Ray Data stages. Each row carries its typed request (``request``, a GenerationRequest) from
the prompts file to the engine; the stages add ``embeds``, then ``pixels``, then the written file.

- EncodeStage (CPU): an edit's input files read into its request (a missing or unreadable one is the row's
  ``error``), the request's texts -> embeddings.
- GenerateStage (one GPU an actor): embeddings -> uint8 pixels, with the engine and its staging plan (rows with
  an error pass through).
- WriteStage (CPU, no CPUs reserved): pixels -> an image file written atomically, then its manifest row (or the
  row's error).

torch is imported in the stages' actors only (their constructors and calls).
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
from PIL import Image

from ..core.errors import ZImageError, user_message
from ..core.formats import image_format
from ..core.control import with_control_image
from ..core.images import read_file, with_edit_inputs
from .output import OutputDir, write_atomic

log = logging.getLogger("zimage_serve")


def objects(values: list) -> np.ndarray:
    """A 1-D numpy array of Python objects (arrays of differing shapes, requests), as Ray Data columns hold them."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def row(item, request) -> dict:
    """The row of a prompts-file line (``prompts_file.Item``) and its request, as the stages read it: the request and
    the paths of its inputs (read by the EncodeStage), flat (Arrow holds them as columns)."""
    return {"id": item.id, "stem": item.stem, "request": request, "image": item.image or "", "mask": item.mask or "",
            "sized": item.sized, "control_image": item.control_image or "", "control_preprocess": item.control_preprocess,
            "control_scale": -1.0 if item.control_scale is None else item.control_scale}


def batch_of(rows: list[dict]) -> dict:
    """Rows as the numpy batch Ray Data hands a stage (``batch_format="numpy"``)."""
    return {key: objects([r[key] for r in rows]) if key == "request" else np.array([r[key] for r in rows])
            for key in rows[0]}


class EncodeStage:
    """Prompts -> embeddings (float32 arrays [tokens, hidden]; ``negative_embeds`` empty when not guided).

    ``threads`` torch threads (Ray sets OMP_NUM_THREADS to the actor's num_cpus, so one unless told);
    ``dtype`` as the serving encoder's ``encoder.dtype`` (model.encoding.cpu_encoder_dtype)."""

    def __init__(self, model: str, threads: int = 1, dtype: str = "auto"):
        # imported here, in the actor: after this worker's preload (model/preload.py), before transformers
        from ..model.startup import remember_installed_packages

        remember_installed_packages()
        import torch  # (see above)

        from ..model.encoding import PromptEncoder, cpu_encoder_dtype
        from ..model.loader import load_text_encoder
        from ..model.sources import resolve

        torch.set_num_threads(threads)
        self.dtype = cpu_encoder_dtype(dtype)
        self.encoder = PromptEncoder(*load_text_encoder(resolve(model), torch.device("cpu"), self.dtype))

    def __call__(self, batch: dict) -> dict:
        controls = zip(batch["control_image"], batch["control_preprocess"], batch["control_scale"])
        loaded = [_with_inputs(r, image, mask, sized, control)
                  for r, image, mask, sized, control in zip(batch["request"], batch["image"], batch["mask"],
                                                            batch["sized"], controls)]
        requests = [r for r, _ in loaded]
        texts = list(dict.fromkeys(t for r in requests for t in r.texts))
        encoded = dict(zip(texts, (e.float().numpy() for e in self.encoder.encode(texts))))
        hidden = next(iter(encoded.values())).shape[1]
        none = np.zeros((0, hidden), np.float32)
        return {**batch, "request": objects(requests), "error": np.array([error for _, error in loaded]),
                "embeds": objects([encoded[r.prompt] for r in requests]),
                "negative_embeds": objects([encoded[r.negative_prompt] if r.guided else none for r in requests])}


def _with_inputs(request, image: str, mask: str, sized: bool, control: tuple = ("", "none", -1.0)) -> tuple:
    """(the row's request with its control image and edit's inputs read, "") or, when they can't be, (the request,
    why). ``control``: (the control image's path or "", its preprocessing, its scale or -1: the default)."""
    control_image, preprocess, scale = control
    try:
        if control_image:
            request = with_control_image(request, read_file(str(control_image), "control_image"), str(preprocess),
                                         scale=None if scale < 0 else float(scale))
        if not image:
            return request, ""
        size = (request.width, request.height) if sized else None
        return with_edit_inputs(request, read_file(image, "image"), read_file(mask, "mask") if mask else None, size), ""
    except ZImageError as e:
        return request, user_message(e)


class GenerateStage:
    """Embeddings -> images, as uint8 pixel arrays for the WriteStage.

    It hands the pixels on instead of encoding and writing them itself, so the GPU starts the next
    batch while another actor encodes and writes this one."""

    def __init__(self, model: str, batch_size: int, policy: str, max_side: int, compile: bool = True,
                 fp8: bool | str = False,
                 adapters: dict | None = None, controlnet: str | None = None):
        """``adapters``: {name: {"source", "scale"}} of the job's LoRA adapters (``--adapter``), all held by the
        actor (LoRA slots made at load, as a serving replica makes them); one that can't be used is listed in
        ``adapter_errors`` and its rows become their manifest lines' errors. ``controlnet``: the job's ControlNet
        (``--controlnet``), placed by the plan as a serving replica places it."""
        # imported here, in the GPU actor
        from ..model.planner import Workload
        from ..model.startup import StartClock, start_engine

        clock = StartClock()
        adapters = adapters or {}
        # batches of at most the plan's batch; the speed-ups apply on a GPU only; room for every adapter (all held)
        started = start_engine(model, Workload(max_side, max_side, batch_size), clock, policy=policy, fp8=fp8,
                               adapters={n: a["source"] for n, a in adapters.items()}, controlnet=controlnet,
                               speedups={"compile": compile, "compile_artifacts": compile})
        self.engine, self.adapter_errors = started.engine, started.adapter_errors
        self.adapter_scales = {name: adapters[name].get("scale", 1.0) for name in started.adapters}
        for name, held in started.adapters.items():
            self.engine.load_adapter(name, held, self.adapter_scales[name])
        log.info("GPU actor ready: start stages (s) %s", clock.report()["stages_s"])
        self.engine.set_progress(False)

    def __call__(self, batch: dict) -> dict:
        import torch  # in the GPU actor, as in __init__

        from ..model.engine import Job

        tensor = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # a writable copy
        # every request says the scale it runs at (the manifest's lora_scale): its own, else its adapter's
        requests = [r.replace(adapter_scale=self.adapter_scales[r.adapter])
                    if r.adapter in self.adapter_scales and r.adapter_scale is None else r for r in batch["request"]]
        errors = [error or self.adapter_errors.get(request.adapter, "")
                  for error, request in zip(batch["error"], requests)]
        rows = [i for i, error in enumerate(errors) if not error]
        jobs = [Job.of(requests[i], [tensor(batch["embeds"][i]), tensor(batch["negative_embeds"][i])])
                for i in rows]
        t0 = time.perf_counter()
        images = self.engine.generate(jobs).images if jobs else []
        seconds = round((time.perf_counter() - t0) / max(1, len(jobs)), 4)
        pixels = [None] * len(batch["id"])
        for i, image in zip(rows, images):
            pixels[i] = np.asarray(image)
        # the writer needs the requests' fields, not their input images' pixels
        requests = objects([r.without_images() for r in requests])
        return {"id": batch["id"], "stem": batch["stem"], "request": requests, "error": np.array(errors),
                "pixels": objects(pixels), "seconds": np.full(len(pixels), seconds)}


class WriteStage:
    """Pixels -> image files, each written atomically, then its manifest row (a file exists before the
    driver lists it)."""

    def __init__(self, out_dir: str, png_workers: int = 1):
        self.out = OutputDir(out_dir)
        self.png_workers = png_workers  # PNG threads: the writer reserves no CPUs (job.py), so one by default

    def __call__(self, batch: dict) -> dict:
        from ..model.imaging import encode_image  # model/ in the writer actor only

        rows = {k: [] for k in ("id", "prompt", "seed", "size", "steps", "model", "lora_scale", "file", "bytes",
                                "sha256", "seconds", "error")}
        for rid, stem, request, pixels, seconds, error in zip(batch["id"], batch["stem"], batch["request"],
                                                              batch["pixels"], batch["seconds"], batch["error"]):
            if error:  # the row's manifest line says why; no file
                for key, value in (("id", rid), ("prompt", request.prompt), ("seed", request.seed), ("size", ""),
                                   ("steps", request.steps), *_adapter_fields(request), ("file", ""), ("bytes", 0),
                                   ("sha256", ""), ("seconds", 0.0), ("error", error)):
                    rows[key].append(value)
                continue
            data = encode_image(Image.fromarray(pixels), request.output_format, workers=self.png_workers)
            name = f"{stem}.{image_format(request.output_format).extension}"
            write_atomic(self.out.path, name, data)
            for key, value in (("id", rid), ("prompt", request.prompt), ("seed", request.seed), ("size", request.size),
                               ("steps", request.steps), *_adapter_fields(request), ("file", name), ("bytes", len(data)),
                               ("sha256", hashlib.sha256(data).hexdigest()), ("seconds", seconds), ("error", "")):
                rows[key].append(value)
        return {k: np.array(v) for k, v in rows.items()}


def _adapter_fields(request) -> tuple:
    """The manifest's ``model`` (the LoRA adapter, "" for the base) and ``lora_scale`` (0.0 for the base)."""
    return ("model", request.adapter or ""), ("lora_scale", request.adapter_scale or 0.0)
