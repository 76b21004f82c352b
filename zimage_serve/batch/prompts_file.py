"""Reading and checking a batch job's prompts file, all of it, before any model is loaded.

JSONL: one object a line with ``id``, ``prompt`` and optional ``seed``, ``size``, ``steps``,
``negative_prompt``, ``guidance_scale``, ``model`` (a LoRA adapter the job was given with ``--adapter``; absent
or empty: the base model) and ``lora_scale`` (0 to 2; default the adapter's), and for an edit ``image`` (a path,
relative to the prompts file's directory unless absolute), optional ``mask`` (inpainting) and ``strength``; with a
ControlNet (the job's ``--controlnet``) ``control_image`` (a path, as ``image``), ``controlnet_conditioning_scale``
(0 to 2, default 0.75) and ``control_preprocess`` (``none`` or ``canny``), a control image with an ``image`` and a
``mask`` making it ControlNet inpainting. Plain text: one prompt a line, ids
from line numbers. Every problem of the file itself is reported with its line number, before anything runs; an
input image that is missing or unreadable is found when the job reads it (batch/stages.py), and is that line's
error in the manifest while the rest of the job goes on.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.control import PREPROCESS
from ..core.errors import InvalidInput, ZImageError
from ..core.request import MAX_CONTROL_SCALE, GenerationRequest, check_control_inputs
from ..core.bounds import (Bounds, check_lora_scale, check_prompt, check_seed, check_steps, check_strength,
                           parse_size)

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FIELDS = {"id", "prompt", "seed", "size", "steps", "negative_prompt", "guidance_scale", "image", "mask", "strength",
          "model", "lora_scale", "control_image", "controlnet_conditioning_scale", "control_preprocess"}
CONTROL_FIELDS = ("control_image", "controlnet_conditioning_scale", "control_preprocess")


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    seed: int
    width: int
    height: int
    steps: int
    negative_prompt: str = ""
    guidance_scale: float = 0.0
    line: int = 0
    image: str | None = None  # an edit's input (an absolute path), read by the job
    mask: str | None = None  # inpainting
    strength: float | None = None
    sized: bool = True  # the line (or the job) set the size; False: an edit made at its input's size
    adapter: str | None = None  # a LoRA adapter's name (the line's ``model``)
    adapter_scale: float | None = None  # None: the adapter's own scale
    control_image: str | None = None  # a ControlNet's control image (an absolute path), read by the job
    control_scale: float | None = None  # None: diffusers' 0.75
    control_preprocess: str = "none"

    @property
    def stem(self) -> str:
        """The image's file name without extension: the id when it is a safe file name, else a hash.

        Never a path: no separators, no '..', nothing outside the output directory."""
        if SAFE_ID.match(self.id) and not self.id.startswith(".") and ".." not in self.id:
            return self.id
        return "id-" + hashlib.sha256(self.id.encode()).hexdigest()[:24]

    def to_dict(self) -> dict:
        return asdict(self)

    def request(self, output_format: str = "png") -> GenerationRequest:
        """The line as the typed request the stages carry to the engine."""
        return GenerationRequest(prompt=self.prompt, seed=self.seed, width=self.width, height=self.height,
                                 steps=self.steps, guidance_scale=self.guidance_scale,
                                 negative_prompt=self.negative_prompt, output_format=output_format,
                                 strength=self.strength, adapter=self.adapter, adapter_scale=self.adapter_scale)


class PromptsFileError(ZImageError):
    def __init__(self, path: str, problems: list[str]):
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown))
        self.problems = problems


def read_prompts(path: str | Path, size: str = "1024x1024", steps: int = 8, base_seed: int = 0,
                 bounds: Bounds = Bounds(), adapters: frozenset[str] = frozenset(),
                 controlnet: bool = False) -> list[Item]:
    """All items of the file, or PromptsFileError listing every bad line. ``adapters``: the names a line's
    ``model`` may give (the job's ``--adapter`` names); ``controlnet``: whether lines may carry a control image
    (the job has a ``--controlnet``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ZImageError(f"can't read prompts file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ZImageError(f"prompts file {path} is not UTF-8 text") from None
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    jsonl = first.startswith("{")
    default_w, default_h = parse_size(size, bounds)
    items, problems, seen = [], [], {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = _record(raw, number, jsonl)
            item = Item(
                id=record["id"], prompt=check_prompt(record["prompt"], bounds),
                seed=check_seed(_int(record.get("seed", base_seed + number), "seed"), bounds),
                width=default_w, height=default_h, steps=check_steps(_int(record.get("steps", steps), "steps"), bounds),
                negative_prompt=_str(record.get("negative_prompt", ""), "negative_prompt"),
                guidance_scale=_float(record.get("guidance_scale", 0.0), "guidance_scale"), line=number)
            if "size" in record:
                w, h = parse_size(_str(record["size"], "size"), bounds)
                item = Item(**{**item.to_dict(), "width": w, "height": h})
            if "image" in record or "mask" in record or "strength" in record:
                item = _edit(item, record, path.parent, sized="size" in record)
            if "model" in record or "lora_scale" in record:
                item = _adapter(item, record, adapters)
            if any(name in record for name in CONTROL_FIELDS):
                item = _control(item, record, path.parent, controlnet)
        except InvalidInput as e:
            problems.append(f"line {number}: {e}")
            continue
        if item.id in seen:
            problems.append(f"line {number}: duplicate id {item.id!r} (first on line {seen[item.id]})")
            continue
        seen[item.id] = number
        items.append(item)
    if not items and not problems:
        problems.append("no prompts")
    if problems:
        raise PromptsFileError(str(path), problems)
    return items


def _edit(item: Item, record: dict, base: Path, sized: bool) -> Item:
    """The line's edit fields: paths made absolute (relative ones are the prompts file's directory's)."""
    if "image" not in record:
        raise InvalidInput("mask and strength need an image (the edit's input)")
    paths = {name: str(base / _str(record[name], name)) for name in ("image", "mask") if name in record}
    strength = check_strength(_number(record["strength"], "strength")) if "strength" in record else None
    return Item(**{**item.to_dict(), **paths, "strength": strength, "sized": sized})


def _adapter(item: Item, record: dict, adapters: frozenset[str]) -> Item:
    """The line's LoRA adapter (``model``) and its scale, checked against the adapters the job was given."""
    name = _str(record.get("model", ""), "model")
    if name and name not in adapters:
        given = ", ".join(sorted(adapters)) if adapters else "none (give them with --adapter NAME=SOURCE)"
        raise InvalidInput(f"model {name!r} is not an adapter of this job; adapters: {given}")
    if "lora_scale" in record and not name:
        raise InvalidInput("lora_scale needs a model (the LoRA adapter it scales)")
    scale = check_lora_scale(_number(record["lora_scale"], "lora_scale")) if "lora_scale" in record else None
    return Item(**{**item.to_dict(), "adapter": name or None, "adapter_scale": scale})


def _control(item: Item, record: dict, base: Path, controlnet: bool) -> Item:
    """The line's control image (its path made absolute), scale and preprocessing."""
    if "control_image" not in record:
        raise InvalidInput("controlnet_conditioning_scale and control_preprocess need a control_image")
    if not controlnet:
        raise InvalidInput("control_image needs a ControlNet: give the job one with --controlnet SOURCE")
    check_control_inputs(item.image is not None, item.mask is not None, item.strength)
    scale = None
    if "controlnet_conditioning_scale" in record:
        scale = _number(record["controlnet_conditioning_scale"], "controlnet_conditioning_scale")
        if not 0 <= scale <= MAX_CONTROL_SCALE:
            raise InvalidInput(f"controlnet_conditioning_scale must be between 0 and {MAX_CONTROL_SCALE:g}, got {scale:g}")
    preprocess = _str(record.get("control_preprocess", "none"), "control_preprocess")
    if preprocess not in PREPROCESS:
        raise InvalidInput(f"control_preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    return Item(**{**item.to_dict(), "control_image": str(base / _str(record["control_image"], "control_image")),
                   "control_scale": scale, "control_preprocess": preprocess})


def _record(raw: str, number: int, jsonl: bool) -> dict:
    if not jsonl:
        return {"id": f"line-{number:06d}", "prompt": raw.strip()}
    try:
        record = json.loads(raw)
    except ValueError as e:
        raise InvalidInput(f"not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise InvalidInput("each line must be a JSON object")
    unknown = set(record) - FIELDS
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(FIELDS))}")
    if "id" not in record or "prompt" not in record:
        raise InvalidInput("needs both 'id' and 'prompt'")
    rid = record["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
        raise InvalidInput("id must be a non-empty string or integer")
    if not isinstance(record["prompt"], str):
        raise InvalidInput("prompt must be a string")
    return {**record, "id": str(rid).strip()}


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    return value


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be a number, got {value!r}")
    return float(value)


def _float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 30:
        raise InvalidInput(f"{name} must be a number between 0 and 30, got {value!r}")
    return float(value)


def _str(value, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {value!r}")
    return value
