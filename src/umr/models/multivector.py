"""The interface of late-interaction (multi-vector) models: one vector per token, MaxSim scores.

A :class:`MultiVectorEmbedder` stands beside :class:`~umr.models.base.Embedder`, not under it:
its ``encode_*`` return a list of ``(n_tokens, dim)`` arrays, not one ``(N, dim)`` matrix, so code
written for single vectors cannot take one by mistake; code that handles both asks
``isinstance(model, MultiVectorEmbedder)``. It keeps everything else users know from
:class:`Embedder`: items of any modality, cost-budget batching sorted by cost with the input order
restored, per-item errors (``on_error="skip"``), progress bars, prefetching. A family implements
:meth:`MultiVectorEmbedder._cost`, :meth:`MultiVectorEmbedder.prepare` and
:meth:`MultiVectorEmbedder.embed_prepared`.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.items import SINGLE_VALUES, Item, ItemError, as_items
from .base import OnError, check_items, fits_one_pass, plan_batches, prepare_each, run_batches, word_spans
from .identity import ModelIdentity
from .prefetch import PrefetchingLoader, resolved_workers

#: query-token x candidate-token products computed at once by :func:`maxsim` (bounds its memory)
MAXSIM_BLOCK = 1 << 24


@dataclass
class MultiVectorResult:
    """Token vectors for the items that could be embedded, and why the others could not.

    ``vectors[j]`` (``(n_tokens, dim)`` float32, rows L2-normalised) belongs to input position
    ``indices[j]``; ``indices`` is increasing.
    """

    vectors: list[np.ndarray]
    indices: np.ndarray
    errors: list[ItemError] = field(default_factory=list)


def maxsim(queries: Sequence[np.ndarray], candidates: Sequence[np.ndarray]) -> np.ndarray:
    """Late-interaction scores ``(len(queries), len(candidates))`` float32: for each pair, the sum
    over the query's tokens of the best dot product with any of the candidate's tokens.

    Exact on the vectors given (no padding enters a maximum); candidates are scanned as one
    concatenated token matrix, in blocks of at most :data:`MAXSIM_BLOCK` products.
    """
    if not len(queries) or not len(candidates):
        return np.zeros((len(queries), len(candidates)), dtype=np.float32)
    lengths = np.array([len(c) for c in candidates])
    if (lengths == 0).any():
        raise ValueError(f"candidate {int(np.argmin(lengths))} has no token vectors")
    tokens = np.concatenate([np.asarray(c, dtype=np.float32) for c in candidates])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    scores = np.empty((len(queries), len(candidates)), dtype=np.float32)
    for row, query in enumerate(queries):
        query = np.asarray(query, dtype=np.float32)
        if query.ndim != 2 or query.shape[1] != tokens.shape[1]:
            raise ValueError(f"query {row} has shape {query.shape}; the candidates have {tokens.shape[1]} dimensions")
        step = max(1, MAXSIM_BLOCK // max(len(query), 1))
        first = 0
        while first < len(candidates):  # whole candidates per block, at least one
            last = int(np.searchsorted(starts, starts[first] + step, side="left"))
            last = max(last, first + 1)
            block = tokens[starts[first]: starts[last - 1] + lengths[last - 1]]
            products = query @ block.T  # (query tokens, block tokens)
            best = np.maximum.reduceat(products, starts[first:last] - starts[first], axis=1)
            scores[row, first:last] = best.sum(axis=0)
            first = last
    return scores


class MultiVectorEmbedder(ABC):
    """Maps items (text, image or both) to one L2-normalised float32 vector per token."""

    name: str
    #: dimensions of each token vector
    dim: int
    #: at most this many items in one forward pass
    batch_size: int = 8
    #: at most this much padded cost (``items x largest cost``) in one forward pass; None = no limit
    cost_budget: int | None = None
    #: what this model is (folder, files, options), set by ``load_model``; None when built by hand
    identity: "ModelIdentity | None" = None
    #: whether images reach the model as pixels (the ColPali family embeds page images)
    sees_images: bool = True
    #: whether it embeds video items (no late-interaction family does yet); the index reads it to
    #: decide whether a video file becomes segments or that file's error, as for ``Embedder``
    sees_video: bool = False
    #: worker threads preparing items ahead of the forward pass (see :mod:`umr.models.prefetch`)
    prefetch_workers: int | None = None
    prefetch_ahead: int = 2

    # -- what users call -------------------------------------------------------------------

    def encode_queries(self, items: "Sequence[Item | str] | Item | str", instruction: str | None = None, *,
                       batch_size: int | None = None,
                       show_progress_bar: bool | None = None) -> "list[np.ndarray] | np.ndarray":
        """Token vectors of queries: a list of ``(n_tokens, dim)`` arrays, or one array for a
        single query; ``instruction`` applies to every query that has none of its own."""
        single = isinstance(items, SINGLE_VALUES)
        queries = as_items([items] if single else items, is_query=True, instruction=instruction)
        vectors = self.embed(queries, batch_size=batch_size, show_progress_bar=show_progress_bar).vectors
        return vectors[0] if single else vectors

    def encode_candidates(self, items: "Sequence[Item | str] | Item | str", *, batch_size: int | None = None,
                          show_progress_bar: bool | None = None) -> "list[np.ndarray] | np.ndarray":
        """Token vectors of candidates (documents): a list of ``(n_tokens, dim)`` arrays, or one array."""
        single = isinstance(items, SINGLE_VALUES)
        candidates = as_items([items] if single else items, is_query=False)
        vectors = self.embed(candidates, batch_size=batch_size, show_progress_bar=show_progress_bar).vectors
        return vectors[0] if single else vectors

    def score(self, queries: Sequence[np.ndarray], candidates: Sequence[np.ndarray]) -> np.ndarray:
        """MaxSim scores ``(len(queries), len(candidates))`` of token vectors from ``encode_*``."""
        return maxsim(queries, candidates)

    def embed(self, items: Sequence[Item], *, batch_size: int | None = None,
              show_progress_bar: bool | None = None, on_error: OnError = "raise") -> MultiVectorResult:
        """Embed items as they are; bad items raise (``"raise"``) or are listed in
        :attr:`MultiVectorResult.errors` while the rest are embedded as without them (``"skip"``)."""
        costs, errors = check_items(items, self.check, on_error=on_error)
        good = sorted(costs)
        max_items = batch_size or self.batch_size
        plan = plan_batches([costs[i] for i in good], max_items=max_items, budget=self.cost_budget)
        vectors: dict[int, np.ndarray] = {}
        if show_progress_bar is None:
            show_progress_bar = sys.stderr.isatty() and len(good) > max_items
        workers = resolved_workers(self.prefetch_workers)
        loader = (PrefetchingLoader(items, [[good[j] for j in batch] for batch in plan], self.prepare,
                                    workers=workers, ahead=self.prefetch_ahead) if workers > 0 and plan else None)
        with tqdm(total=len(good), disable=not show_progress_bar, desc=f"embed [{self.name}]",
                  unit="item", dynamic_ncols=True) as bar:
            def run(positions: list[int]) -> list[np.ndarray]:
                prepared = (loader.take(positions) if loader is not None
                            else prepare_each([items[i] for i in positions], self.prepare))
                with torch.inference_mode():
                    return [t.float().cpu().numpy() for t in self.embed_prepared(prepared)]

            try:
                for positions, out in run_batches(plan, good, run, on_error=on_error, errors=errors, bar=bar):
                    vectors.update(zip(positions, out))
                    if loader is not None:
                        loader.release(positions)
            finally:
                if loader is not None:
                    loader.close()
        indices = np.array(sorted(vectors), dtype=np.int64)
        return MultiVectorResult(vectors=[vectors[i] for i in indices], indices=indices,
                                 errors=[errors[i] for i in sorted(errors)])

    def check(self, item: Item) -> int:
        """The item's cost estimate, or :class:`ItemError` if this model cannot embed it (no forward pass)."""
        item.modality  # noqa: B018 - raises for an item with neither text nor image
        return int(self._cost(item))

    def fits_one_pass(self, costs: Sequence[int]) -> bool:
        """Whether items of these :meth:`check` costs make one forward pass of :meth:`embed`."""
        return len(costs) <= 1 or fits_one_pass(len(costs), max(costs), max_items=self.batch_size,
                                                budget=self.cost_budget)

    # -- what families implement -----------------------------------------------------------

    def vector_options(self) -> dict:
        """Every option this instance was loaded with that changes its vectors, as plain values."""
        return {}

    @abstractmethod
    def _cost(self, item: Item) -> int:
        """A cheap estimate of the item's forward cost; :class:`ItemError` for an item it cannot embed."""

    @abstractmethod
    def prepare(self, item: Item) -> Any:
        """Everything one item needs before the model (no model work); raises for a bad item."""

    @abstractmethod
    def embed_prepared(self, prepared: list[Any]) -> list[torch.Tensor]:
        """Each prepared item's token vectors ``(n_tokens, dim)``, rows L2-normalised, padding removed."""

    def text_window(self) -> int | None:
        """How many tokens of a candidate's text the model reads (None: no known limit)."""
        return None

    def text_window_beside_image(self, width: int, height: int) -> int | None:
        """Text beside an image: a late-interaction index embeds the image alone (a page's text
        layer is not read), so no window applies (None)."""
        return None

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character offsets of the tokens the model makes of ``text`` (readers cut passages at them)."""
        return word_spans(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"
