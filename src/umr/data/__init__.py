"""Readers that turn files on disk into :class:`~umr.core.items.Item` streams."""

from .items import read_items_jsonl

__all__ = ["read_items_jsonl"]
