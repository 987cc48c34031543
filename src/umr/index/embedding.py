"""The embed step of an indexing run, behind one contract: chunks of items in, one
:class:`~umr.core.results.EmbedResult` per chunk out, in order.

:class:`Index` plans and represents items and commits what comes back; a :class:`ChunkEmbedder`
only decides where the model runs. :class:`LocalEmbedder` is this process's model, one chunk
at a time; :class:`~umr.index.ray_embed.RayEmbedder` runs a pool of model actors on Ray with
several chunks in flight. Results come back in chunk order, so commits happen in the same order
as in a single-process run and a killed driver resumes the same way.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol, Sequence, runtime_checkable

from ..core.items import Item
from ..core.results import EmbedResult


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


def embed_in_chunks(embedder: ChunkEmbedder, items: Sequence[Item], *, chunk_size: int = 256,
                    batch_size: int | None = None) -> EmbedResult:
    """All of ``items`` through ``embedder`` in chunks, as one result in input order (what
    ``model.embed(items, on_error="skip")`` returns, positions counted over all items)."""
    import numpy as np

    starts = range(0, len(items), chunk_size)
    vectors, indices, errors = [], [], []
    for start, result in zip(starts, embedder.map((items[s:s + chunk_size] for s in starts), batch_size=batch_size)):
        vectors.append(np.asarray(result.vectors, np.float32))
        indices.append(np.asarray(result.indices, np.int64) + start)
        errors += [err.at(index=err.index + start) for err in result.errors]
    if not vectors:
        return EmbedResult(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), [])
    return EmbedResult(np.concatenate(vectors), np.concatenate(indices), errors)
