"""Small file helpers every reader shares: JSONL records and their fields, paths relative to a
data folder, URLs, and file names that are not valid UTF-8 (stored losslessly, shown readably).

A bad record (a line that is not a JSON object, a field of the wrong type, no id) is that
record's :class:`~umr.core.items.ItemError`, never the end of the read: the helpers below say what
is wrong with one record, and each reader decides what becomes of it (an index error, a failed
benchmark item).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Callable, Iterator

from ..core.items import Item, ItemError


def parse_json_record(raw: str, *, line: int) -> dict | ItemError:
    """One JSONL line as a JSON object, or the :class:`ItemError` of a line that is not one."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        return ItemError(None, f"invalid JSON ({exc.msg} at column {exc.colno})", line=line)
    if not isinstance(record, dict):
        return ItemError(None, f"expected a JSON object, got {type(record).__name__}", line=line)
    return record


def jsonl_records(path: Path) -> Iterator[tuple[int, dict | ItemError]]:
    """``(line number, record or its ItemError)`` for every non-blank line of a JSONL file."""
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                yield line_no, parse_json_record(line, line=line_no)


def read_jsonl_records(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSONL file; a broken line raises ``ValueError`` naming file and line."""
    for line_no, record in jsonl_records(path):
        if isinstance(record, ItemError):
            raise ValueError(f"{path}:{line_no}: {record.reason}")
        yield record


def record_id(record: dict, field: str) -> str:
    """The record's id (a string or a number, as text); an :class:`ItemError` when it has none."""
    value = record.get(field)
    if value is None or value == "":
        raise ItemError(None, f"has no {field!r} (its id)")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ItemError(None, f"field {field!r} (its id) must be a string or a number, got {type(value).__name__}")
    return str(value)


def string_field(record: dict, field: str, item_id: str | None) -> str | None:
    """A field that is text or absent: its value, or an :class:`ItemError` of the wrong type."""
    value = record.get(field)
    if value is not None and not isinstance(value, str):
        raise ItemError(item_id, f"field {field!r} must be a string or null, got {type(value).__name__}")
    return value


def image_field(record: dict, field: str, item_id: str | None, root: Path) -> str | None:
    """An image path field resolved under ``root`` (None when absent or empty); an
    :class:`ItemError` for a value that is not text, or a URL (files are never fetched)."""
    value = string_field(record, field, item_id)
    if value and is_url(value):
        raise ItemError(item_id, url_refusal(field, value))
    return resolve_path(root, value)


def read_item(parse: Callable[[dict], Item], record: dict | ItemError, *, where: str, line: int,
              is_query: bool) -> Item:
    """``parse(record)``, or for a bad record a failed item in its place (:meth:`Item.failed`),
    named by the record's id or, without one, ``where:line`` (``corpus.jsonl:7``)."""
    try:
        if isinstance(record, ItemError):
            raise record
        return parse(record)
    except ItemError as exc:
        return Item.failed(exc.item_id if exc.item_id is not None else f"{where}:{line}", exc.reason,
                           is_query=is_query)


def resolve_path(root: Path, value: str | None) -> str | None:
    """``value`` as a path: absolute as given, relative under ``root``; None for empty values.

    A URL is returned as given (never joined to ``root``), for the caller to refuse by name.
    """
    if not value:
        return None
    if is_url(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(root) / path)


#: ``scheme://`` at the start of an image value: a URL, which readers refuse rather than fetch
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(value: str) -> bool:
    """Whether ``value`` is a URL (``http://``, ``https://``, ``file://``, ...) rather than a path."""
    return bool(_URL.match(value))


def url_refusal(field: str, value: str) -> str:
    """The one-line reason an item with a URL for its image is refused."""
    return f"{field} {value!r}: URLs are not supported (umr does not fetch files); download it and give its path"


def _os_bytes(name: str) -> bytes:
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte (e.g. from JSON)
        return name.encode("utf-8", "surrogatepass")


def is_storable(name: str) -> bool:
    """Whether ``name`` is valid Unicode (no surrogates left by ``os.fsdecode`` for non-UTF-8 bytes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """``name`` as valid Unicode for ids and messages: bytes of an OS name that are not UTF-8
    (Latin-1 names from Windows or zip archives) are shown as ``\\xNN``; valid names are unchanged."""
    return name if is_storable(name) else _os_bytes(name).decode("utf-8", "backslashreplace")


def stored_path(path: Path) -> str:
    """An absolute path as stored in the index: itself, or a ``file:`` URI (the name's bytes
    percent-encoded, so nothing is lost) when the name is not valid UTF-8; :func:`fs_path` inverts."""
    text = str(path)
    return text if is_storable(text) else "file://" + urllib.parse.quote_from_bytes(_os_bytes(text))


def fs_path(stored: str) -> str:
    """The OS path of a stored path (see :func:`stored_path`); ``open()`` and ``os.fsencode`` accept it."""
    if stored.startswith("file://"):
        return os.fsdecode(urllib.parse.unquote_to_bytes(stored[len("file://"):]))
    return stored
