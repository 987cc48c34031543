"""The embed step of an indexing run, behind one contract: chunks of items in, one
:class:`~umr.models.base.EmbedResult` per chunk out, in order.

:class:`Index` plans and represents items and commits what comes back; a :class:`ChunkEmbedder`
only decides where the model runs. :class:`LocalEmbedder` is this process's model, one chunk
at a time; :class:`~umr.index.ray_embed.RayEmbedder` runs a pool of model actors on Ray with
several chunks in flight. Results come back in chunk order, so commits happen in the same order
as in a single-process run and a killed driver resumes the same way.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol, Sequence, runtime_checkable

from ..models.base import EmbedResult
from ..types import Item


@runtime_checkable
class ChunkEmbedder(Protocol):
    def map(self, chunks: Iterable[Sequence[Item]], *, batch_size: int | None = None) -> Iterator[EmbedResult]:
        """One result per chunk, in chunk order; bad items are the result's errors (``on_error="skip"``).

        May read ahead of the chunk whose result it yields (to keep workers busy)."""


class LocalEmbedder:
    """The model in this process, one chunk at a time."""

    def __init__(self, model):
        self.model = model

    def map(self, chunks: Iterable[Sequence[Item]], *, batch_size: int | None = None) -> Iterator[EmbedResult]:
        for items in chunks:
            yield self.model.embed(list(items), batch_size=batch_size, show_progress_bar=False, on_error="skip")
