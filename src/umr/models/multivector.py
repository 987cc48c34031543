"""The interface of late-interaction (multi-vector) models: one vector per token, MaxSim scores.

A :class:`MultiVectorEmbedder` is an :class:`~umr.models.base.ItemEmbedder` beside
:class:`~umr.models.base.Embedder`, not under it: its ``encode_*`` return a list of ``(n_tokens,
dim)`` arrays, not one ``(N, dim)`` matrix, so code written for single vectors cannot take one by
mistake; code that handles both reads the contract's ``multi_vector``. It keeps everything else
users know from :class:`Embedder`: items of any modality, cost-budget batching sorted by cost
with the input order restored, per-item errors (``on_error="skip"``), progress bars, prefetching.
A family implements :meth:`MultiVectorEmbedder._cost`, :meth:`MultiVectorEmbedder.prepare` and
:meth:`MultiVectorEmbedder.embed_prepared`. Scores are :func:`~umr.core.multivector.maxsim.maxsim`,
the kernel the multi-vector index searches with.
"""

from __future__ import annotations

import sys
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.items import Item
from ..core.multivector.maxsim import maxsim
from ..core.results import EmbedResult
from .base import ItemEmbedder, OnError, check_items, plan_batches, prepare_each, run_batches
from .prefetch import PrefetchingLoader, resolved_workers


@dataclass
class MultiVectorResult(EmbedResult):
    """Token vectors for the items that could be embedded, and why the others could not.

    ``vectors[j]`` (``(n_tokens, dim)`` float32, rows L2-normalised) belongs to input position
    ``indices[j]``; ``indices`` is increasing.
    """

    vectors: list[np.ndarray]

    def _vectors_at(self, keep: np.ndarray) -> list[np.ndarray]:
        return [matrix for matrix, kept in zip(self.vectors, keep) if kept]


class MultiVectorEmbedder(ItemEmbedder):
    """Maps items (text, image or both) to one L2-normalised float32 vector per token."""

    multi_vector = True
    batch_size: int = 8
    #: worker threads preparing items ahead of the forward pass (see :mod:`umr.models.prefetch`)
    prefetch_workers: int | None = None
    prefetch_ahead: int = 2
    #: where the forward pass runs (a family sets it on load)
    device: torch.device = torch.device("cpu")

    # -- what users call -------------------------------------------------------------------

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
        workers = resolved_workers(self.prefetch_workers, self.device)
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

    # -- what families implement -----------------------------------------------------------

    @abstractmethod
    def prepare(self, item: Item) -> Any:
        """Everything one item needs before the model (no model work); raises for a bad item."""

    @abstractmethod
    def embed_prepared(self, prepared: list[Any]) -> list[torch.Tensor]:
        """Each prepared item's token vectors ``(n_tokens, dim)``, rows L2-normalised, padding removed."""

    def text_window_beside_image(self, width: int, height: int) -> int | None:
        """Text beside an image: a late-interaction index embeds the image alone (a page's text
        layer is not read), so no window applies (None)."""
        return None
