"""Small file helpers every reader shares: JSONL records, paths relative to a data folder, URLs,
and file names that are not valid UTF-8 (stored losslessly, shown readably)."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Iterator


def read_jsonl_records(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSONL file; a broken line raises ``ValueError`` naming file and line."""
    with Path(path).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None


def require_strings(record: dict, *names: str, where: str = "") -> None:
    """``ValueError`` for the first field of ``names`` whose value is neither a string nor null
    (a number for a text, a list for a path: a record's own error, not a crash later)."""
    for name in names:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"field {where + name!r} must be a string or null, got {type(value).__name__}")


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
