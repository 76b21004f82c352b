"""Reading a multipart/form-data body (what the official openai client sends to ``images.edit``): its text
fields, and its image file parts bounded in bytes as they are read. Decoding them is ``core.images``' job.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from ..core.errors import InvalidInput, TooLarge

FILE_FIELDS = ("image", "mask", "control_image")


def _name(key: str) -> str:
    """``image[]`` (how the openai client names a list of images) is ``image``."""
    return key[:-2] if key.endswith("[]") else key


async def read_form(request: Request, max_upload_bytes: int, max_field_bytes: int) -> tuple[dict, dict]:
    """(text fields, {file field: bytes}) of the request's multipart body. One image, one mask and one control
    image at most; a file over ``max_upload_bytes`` is refused (413) after reading at most one byte more than the limit."""
    try:
        form = await request.form(max_files=len(FILE_FIELDS) + 1, max_fields=64, max_part_size=max_field_bytes)
    except (MultiPartException, HTTPException) as e:  # Starlette raises the parser's error as a 400 HTTPException
        message = getattr(e, "message", None) or getattr(e, "detail", "")
        if "maximum size" in message:
            raise TooLarge(f"a text field of the multipart body is over {max_field_bytes} bytes", code="field_too_large") from None
        raise InvalidInput(f"the multipart body could not be read: {message}", code="invalid_multipart") from None
    fields, files = {}, {}
    try:
        for key, value in form.multi_items():
            name = _name(key)
            if not isinstance(value, UploadFile):
                if name in fields:
                    raise InvalidInput(f"field {name!r} is given more than once", param=name)
                fields[name] = value
                continue
            if name not in FILE_FIELDS:
                raise InvalidInput(f"unexpected file part {key!r}: the files are image, mask and control_image",
                                   param=name)
            if name in files:
                raise InvalidInput(f"one {name} is edited per request; this one sends several", param=name)
            data = await value.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise TooLarge(f"{name} is over the upload limit of {max_upload_bytes} bytes", param=name)
            files[name] = data
    finally:
        await form.close()
    return fields, files
