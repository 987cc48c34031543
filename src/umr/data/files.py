"""Small file helpers every reader shares: JSONL records and paths relative to a data folder."""

from __future__ import annotations

import json
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


def resolve_path(root: Path, value: str | None) -> str | None:
    """``value`` as a path: absolute as given, relative under ``root``; None for empty values."""
    if not value:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(root) / path)
