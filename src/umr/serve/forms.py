"""Bodies sent as JSON or as a multipart form (the search page uploads images as files)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from .security import RequestRefused


async def form_or_json(request: Request, model_cls):
    """A body as ``model_cls``, from JSON or from a multipart form (image as an uploaded file)."""
    upload = None
    try:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return model_cls.model_validate_json(await request.body()), None
        form = await request.form(max_files=1, max_fields=32)
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                upload = await value.read()
            elif key in ("where", "metadata", "modality") and value.strip().startswith(("{", "[")):
                try:
                    fields[key] = json.loads(value)
                except json.JSONDecodeError:
                    raise RequestRefused(400, f"form field {key} is not valid JSON") from None
            elif value != "":
                fields[key] = value
        return model_cls.model_validate(fields), upload
    except ValidationError as exc:  # bad JSON too
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


def body_doc(model_cls, description: str) -> dict:
    """The OpenAPI request body of a route that reads :func:`form_or_json`."""
    return {"requestBody": {"description": description, "content": {
        "application/json": {"schema": model_cls.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "string",
                                                                                     "format": "binary"}}}}}}}
