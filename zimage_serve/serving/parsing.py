"""Wire body -> the one typed request: ``RequestParser`` checks a body against the deployment's wire types
(protocol.wire_types, which carry every bound of the config, so what /openapi.json states is what is checked
here) and builds the :class:`GenerationRequest`, with its uploads (an edit's image and mask, a control image)
not yet decoded (:class:`Uploads`): they are decoded after admission. Every refusal is a domain error naming
the field, in words.
"""

from __future__ import annotations

import base64
import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..core.bounds import (SIZE_MULTIPLE, Bounds, check_dimension, check_lora_scale, check_prompt, check_steps,
                           check_strength, parse_size)
from ..core.control import with_control_image
from ..core.errors import InvalidInput, ModelNotFound, TooLarge
from ..core.images import check_edit_steps, with_edit_inputs
from ..core.request import DEFAULT_STRENGTH, MAX_CONTROL_SCALE, GenerationRequest, check_control_inputs
from ..settings import AppConfig
from .protocol import CONTROL_FIELDS, wire_types


def validation_error(e: ValidationError, bounds: Bounds = Bounds(), served: tuple[str, ...] | str = ()) -> InvalidInput:
    """The first pydantic error as an InvalidInput naming its field, in words (not the pattern's regex)."""
    err = e.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ())) or None
    kind, value = err.get("type"), err.get("input")
    if kind == "extra_forbidden" and param in CONTROL_FIELDS:
        return no_controlnet(param)
    if kind == "extra_forbidden":
        return InvalidInput(f"unknown field {param!r}", param=param, code="unknown_field")
    if kind == "model_type":
        return InvalidInput("the request body must be a JSON object", code="invalid_body")
    if param in ("prompt", "negative_prompt") and isinstance(value, str):
        try:  # its length, emptiness or NUL, as the CLI and the batch job say it
            check_prompt(value, bounds, param=param)
        except InvalidInput as refused:
            return refused
    if param in ("image", "mask", "control_image") and kind == "string_too_long":
        return TooLarge(f"{param} is over the upload limit of {bounds.max_upload_bytes} bytes", param=param)
    if param == "strength" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:  # out of (0, 1], said as the CLI says it
            check_strength(value)
        except InvalidInput as refused:
            return refused
    if param == "size" and kind == "string_pattern_mismatch":
        return InvalidInput(f"size must be 'auto' or WIDTHxHEIGHT (like 1024x1024), each side a multiple of "
                            f"{SIZE_MULTIPLE} between {bounds.min_side} and {bounds.max_side}, got {value!r}",
                            param=param)
    if param == "model" and kind == "literal_error":
        names = (served,) if isinstance(served, str) else served
        return ModelNotFound(f"model {value!r} is not served here; served: {', '.join(repr(m) for m in names)}")
    if param == "lora_scale" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:  # out of range, said as the CLI says it
            check_lora_scale(value)
        except InvalidInput as refused:
            return refused
    if param == "controlnet_conditioning_scale" and kind in ("less_than_equal", "greater_than_equal"):
        return InvalidInput(f"controlnet_conditioning_scale must be between 0 and {MAX_CONTROL_SCALE:g}, got {value}",
                            param=param)
    if param == "response_format" and value == "url":
        return InvalidInput("response_format 'url' is not supported: images are not stored; use b64_json",
                            param=param, code="unsupported_value")
    msg = err.get("msg", "invalid value")
    return InvalidInput(f"{param}: {msg}" if param else msg, param=param)


def no_controlnet(param: str = "control_image") -> InvalidInput:
    """A control request to a deployment that serves no ControlNet: the setting that would serve one."""
    return InvalidInput(f"{param}: this deployment serves no ControlNet; set `controlnet` in the app's args (or "
                        "zimage-serve serve --controlnet SOURCE) to take control images", param=param,
                        code="controlnet_not_configured")




class RequestParser:
    """The wire types of one deployment (its config), and the requests built from bodies checked against them."""

    def __init__(self, config: AppConfig):
        self.config = config
        # the request types, with the config's bounds
        self.wire = wire_types(config.bounds, config.model_name, tuple(config.adapters), bool(config.controlnet))

    def _validate(self, model, body: Any, strict: bool = True):
        try:
            return model.model_validate(body, strict=strict)
        except ValidationError as e:
            raise validation_error(e, self.config.bounds, (self.config.model_name, *self.config.adapters)) from None

    @staticmethod
    def stream_options(body: Any) -> dict:
        """{"stream", "progress_events"} as a body (JSON, or a multipart form's text fields) asks, before it is
        checked (the route to take; the wire types check them with the rest)."""
        values = _form_values(body) if isinstance(body, dict) else {}
        return {name: values.get(name) is True for name in ("stream", "progress_events")}

    def _request(self, req, width: int, height: int, n: int = 1, quality: int | None = None) -> GenerationRequest:
        b = self.config.bounds
        check_prompt(req.prompt, b)
        if req.negative_prompt:
            check_prompt(req.negative_prompt, b, param="negative_prompt")
        steps = check_steps(req.num_inference_steps or self.config.default_steps, b)
        # the wire types bound the seed by max_seed - (max n - 1): seed + n - 1 never passes max_seed
        seed = req.seed if req.seed is not None else random.randrange(2**31)
        adapter, scale = self._adapter(req.model, getattr(req, "lora_scale", None))  # (wire_types: with adapters)
        return GenerationRequest(prompt=req.prompt, negative_prompt=req.negative_prompt or "", seed=seed, width=width,
                                 height=height, steps=steps, guidance_scale=float(req.guidance_scale), n=n,
                                 output_format=req.output_format, quality=quality, adapter=adapter,
                                 adapter_scale=scale, partial_images=getattr(req, "partial_images", None) or 0)

    def _adapter(self, model: str | None, lora_scale: float | None) -> tuple[str | None, float | None]:
        """(adapter, scale) that ``model`` names: (None, None) for the base model ("", absent or its name), else a
        configured adapter at ``lora_scale`` or its configured scale."""
        if not model or model == self.config.model_name:
            if lora_scale is not None:
                raise InvalidInput("lora_scale applies to a LoRA adapter: name one as model (see /v1/models)",
                                   param="lora_scale")
            return None, None
        spec = self.config.adapters[model]  # the wire types allow the served names only
        return model, float(lora_scale if lora_scale is not None else spec.scale)

    def _size(self, text: str, param: str = "size") -> tuple[int, int]:
        return parse_size(self.config.default_size if text == "auto" else text, self.config.bounds, param=param)

    def request_from_images(self, body: Any) -> tuple[GenerationRequest, "Uploads | None"]:
        """``POST /v1/images/generations``'s body (OpenAI's images.generate) as a request, and its control image
        not yet decoded (None: it has none)."""
        req = self._validate(self.wire.images, body)
        request = self._request(req, *self._size(req.size), n=req.n, quality=req.output_compression)
        return self._controlled(request, req, _base64(getattr(req, "control_image", None), "control_image"))

    def request_from_generate(self, body: Any) -> tuple[GenerationRequest, "Uploads | None"]:
        """``POST /generate``'s body as a request (one image), and its control image not yet decoded."""
        req = self._validate(self.wire.generate, body)
        default_w, default_h = self._size("auto")
        width = check_dimension(req.width or default_w, "width", self.config.bounds)
        height = check_dimension(req.height or default_h, "height", self.config.bounds)
        return self._controlled(self._request(req, width, height), req,
                                _base64(getattr(req, "control_image", None), "control_image"))

    def _controlled(self, request: GenerationRequest, req, control: bytes | None,
                    edit: "Uploads | None" = None) -> tuple[GenerationRequest, "Uploads | None"]:
        """``request`` with the control fields of ``req`` checked (the uploads to decode: ``edit``'s, and the
        control image when there is one)."""
        scale = getattr(req, "controlnet_conditioning_scale", None)
        if control is None:
            if scale is not None:
                raise InvalidInput("controlnet_conditioning_scale needs a control_image", param="controlnet_conditioning_scale")
            if getattr(req, "control_preprocess", "none") != "none":
                raise InvalidInput("control_preprocess needs a control_image", param="control_preprocess")
            return request, edit
        if not self.config.controlnet:
            raise no_controlnet()
        uploads = edit or Uploads(bounds=self.config.bounds)
        return request, uploads.with_control(control, req.control_preprocess, scale)

    def edit_parts(self, body: Any, files: dict[str, bytes] | None = None) -> tuple[GenerationRequest, "Uploads"]:
        """``POST /v1/images/edits``'s body (OpenAI's images.edit: image to image, or inpainting with a mask)
        checked, its uploads not yet decoded: (the request of its texts and options, at the size asked for or
        the default, and the uploads, which :meth:`Uploads.read` makes it the edit of). ``files`` None: a
        JSON body, its images base64 or data: URLs. Otherwise a multipart body: ``body`` its text fields (read
        as their types say: ``"7"`` is 7 there) and ``files`` its image parts. What needs no decoding (the
        strength against the steps) is checked here, before any work is spent on the edit."""
        names = ("image", "mask", "control_image")
        if files is None:
            req = self._validate(self.wire.edits, body)
            image, mask, control = (_base64(getattr(req, name, None), name) for name in names)
        else:
            if "control_image" in files and not self.config.controlnet:
                raise no_controlnet()
            req = self._validate(self.wire.edits, _form_values(body), strict=False)
            for name in ("image", "mask"):
                if getattr(req, name) is not None:
                    raise InvalidInput(f"in a multipart body, {name} is a file part, not a text field", param=name)
            image, mask = files.get("image"), files.get("mask")
            # a control image: a file part, or base64 in a text field (what the openai client's extra_body sends)
            control = files["control_image"] if "control_image" in files else \
                _base64(getattr(req, "control_image", None), "control_image")
            if "control_image" in files and getattr(req, "control_image", None) is not None:
                raise InvalidInput("control_image is given twice (a file part and a text field)", param="control_image")
        if image is None:
            raise InvalidInput("image is required: the image to edit", param="image", code="missing_image")
        if control is not None:  # refused before any upload is decoded
            check_control_inputs(True, mask is not None, req.strength)
        strength = check_strength(req.strength) if req.strength is not None else None
        size = None if req.size == "auto" else self._size(req.size)
        request = self._request(req, *(size or self._size("auto")), n=req.n, quality=req.output_compression)
        if control is None:
            check_edit_steps(request.steps, strength if strength is not None else
                             DEFAULT_STRENGTH["inpaint" if mask is not None else "image-to-image"])
        return self._controlled(request.replace(strength=strength), req, control,
                                Uploads(image, mask, size=size, bounds=self.config.bounds))


def _form_values(fields: dict) -> dict:
    """A form's text fields as the edits body's types read them: ``stream`` and ``progress_events`` are JSON-style
    booleans there."""
    flags = {name: fields[name].lower() == "true" for name in ("stream", "progress_events")
             if isinstance(fields.get(name), str) and fields[name].lower() in ("true", "false")}
    return {**fields, **flags}


def _base64(text: str | None, param: str) -> bytes | None:
    """An image sent in JSON: base64, or a ``data:[<type>];base64,`` URL."""
    if text is None:
        return None
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidInput(f"{param} must be base64, or a data: URL with ;base64", param=param, code="invalid_image")
    try:  # line breaks (base64's default output wraps at 76 characters) are not part of the data
        return base64.b64decode("".join(text.split()), validate=True)
    except ValueError:
        raise InvalidInput(f"{param} is not valid base64", param=param, code="invalid_image") from None




@dataclass(frozen=True)
class Uploads:
    """A request's uploads as received, not yet decoded: an edit's image and mask, and the size asked for (None:
    the input's); a control image, how to preprocess it, and its scale."""

    image: bytes | None = None
    mask: bytes | None = None
    control: bytes | None = None
    preprocess: str = "none"
    control_scale: float | None = None
    size: tuple[int, int] | None = None
    bounds: Bounds = Bounds()

    def with_control(self, control: bytes, preprocess: str, scale: float | None) -> "Uploads":
        return dataclasses.replace(self, control=control, preprocess=preprocess, control_scale=scale)

    def read(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with these uploads, checked and decoded: its control image first (``core.control``), then
        the edit's (``core.images.with_edit_inputs``)."""
        if self.control is not None:
            request = with_control_image(request, self.control, self.preprocess, self.bounds, self.control_scale)
        if self.image is not None:
            request = with_edit_inputs(request, self.image, self.mask, self.size, self.bounds)
        return request
