"""The one embedder interface every model family implements.

A backend supplies two hooks — ``_cost`` (a cheap size estimate of one item) and
``_embed_batch`` (vectors for a list of items) — and inherits everything users touch:
``encode_queries`` / ``encode_candidates`` / ``embed``, mixed-modality batches, cost-budget
batching sorted by cost with the input order restored, progress bars, L2 normalisation
and per-item error handling.

Fine-tuning (:mod:`umr.train`) uses :meth:`Embedder.training_forward` (the same computation
with gradients) and the :class:`Trainable` contract (the network to update, how to save it).
"""

from __future__ import annotations

import re
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

# DTYPES and resolve_dtype are re-exported: families written outside umr import them from here
from ..core.devices import DTYPES, resolve_dtype  # noqa: F401
from ..core.items import SINGLE_VALUES, Item, ItemError, as_items
from ..core.results import EmbedResult
from .checkpointing import checkpoint_blocks
from .identity import ModelIdentity
from .prefetch import Prefetching, PrefetchingLoader, resolved_workers

OnError = Literal["raise", "skip"]

#: errors that concern the whole run, never one item: they always propagate
WHOLE_RUN_ERRORS = (MemoryError, torch.OutOfMemoryError)

def plan_batches(costs: Sequence[int], *, max_items: int, budget: int | None) -> list[list[int]]:
    """Group item positions into batches, most expensive first.

    Items are sorted by cost so that each batch pads to similar lengths; a batch is closed
    when adding the next item would make ``len(batch) * max_cost`` exceed ``budget`` (the
    padded size the model really computes) or the batch holds ``max_items``. An item that
    alone exceeds the budget still gets a batch of its own.
    """
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and not fits_one_pass(len(current) + 1, costs[current[0]], max_items=max_items, budget=budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def fits_one_pass(count: int, largest_cost: int, *, max_items: int, budget: int | None) -> bool:
    """Whether ``count`` items, the costliest costing ``largest_cost``, make one forward pass:
    at most ``max_items`` of them and a padded size (``count * largest_cost``) within ``budget``."""
    return count <= max_items and (budget is None or count * largest_cost <= budget)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated words of ``text``."""
    return [match.span() for match in re.finditer(r"\S+", text)]


def tokenizer_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    """:meth:`Embedder.token_spans` for a Hugging Face tokenizer (no special tokens).

    Fast tokenizers give exact character offsets; a slow one (no offsets) falls back to words.
    """
    if not getattr(tokenizer, "is_fast", False):
        return word_spans(text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [(int(a), int(b)) for a, b in encoded["offset_mapping"] if b > a]


def check_items(items: Sequence[Item], check, *, on_error: OnError) -> tuple[dict[int, int], dict[int, ItemError]]:
    """``check(item)`` (a cost, no model work) for every item: ``({position: cost}, {position:
    error})``; with ``on_error="raise"`` the first bad item raises its :class:`ItemError`."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    costs: dict[int, int] = {}
    errors: dict[int, ItemError] = {}
    for i, item in enumerate(items):
        try:
            costs[i] = check(item)
        except WHOLE_RUN_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - sizing one item: that item's error
            error = ItemError.from_exception(item.id, exc).at(index=i)
            if on_error == "raise":
                raise error from None
            errors[i] = error
    return costs, errors


def prepare_each(items: list[Item], prepare) -> list:
    """``[prepare(item) for item in items]``; whatever one item raises (a PIL plug-in error,
    resize arithmetic, ...) becomes its :class:`ItemError`, located at the item, so the caller
    knows which item to drop."""
    prepared = []
    for i, item in enumerate(items):
        try:
            prepared.append(prepare(item))
        except WHOLE_RUN_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - preparing one item: that item's error
            raise ItemError.from_exception(item.id, exc).at(index=i) from None
    return prepared


def run_batches(plan: list[list[int]], good: list[int], run, *, on_error: OnError,
                errors: dict[int, ItemError], bar) -> Iterator[tuple[list[int], Any]]:
    """Run each planned batch (``plan`` indexes ``good``, the positions of runnable items):
    yields ``(positions, run(positions))``. An :class:`ItemError` from ``run`` names its item:
    it is raised (``on_error="raise"``) or recorded in ``errors`` and the rest of the batch runs
    again, so one bad item never costs the others. ``bar`` counts items done or dropped."""
    for batch in plan:
        positions = [good[j] for j in batch]
        while positions:
            try:
                out = run(positions)
            except ItemError as exc:
                if exc.index is None and len(positions) > 1:
                    raise  # a backend bug: it must say which item failed
                culprit = positions[exc.index or 0]
                if on_error == "raise":
                    raise exc.at(index=culprit) from None
                errors[culprit] = exc.at(index=culprit)
                positions = [i for i in positions if i != culprit]
                bar.update(1)
                continue
            bar.update(len(positions))
            yield positions, out
            break


class ItemEmbedder(ABC):
    """What every embedder is, whatever it returns per item: the contract callers that take both
    kinds rely on (the index, the server, the CLI), instead of probing types or attributes.

    :class:`Embedder` returns one vector per item; a late-interaction
    :class:`~umr.models.multivector.MultiVectorEmbedder` returns one vector per token
    (:attr:`multi_vector`), scored by MaxSim. Both batch by the cost that :meth:`check` gives,
    report bad items as :class:`ItemError` and take the same query/candidate calls.
    """

    name: str
    #: dimensions of a vector (of each token vector, for a multi-vector model)
    dim: int
    #: one vector per token (late interaction, MaxSim), not one per item: ``encode_*`` return a
    #: list of ``(n_tokens, dim)`` arrays and ``embed`` a :class:`~umr.models.multivector.MultiVectorResult`
    multi_vector: ClassVar[bool] = False
    #: at most this many items in one forward pass
    batch_size: int = 32
    #: at most this much padded cost (``items x largest cost``) in one forward pass; None = no limit
    cost_budget: int | None = None
    #: what this model is (folder, files, options), set by ``load_model``; None when built by hand
    identity: ModelIdentity | None = None
    #: it reads pixels (MLLMs, CLIP, the ColPali family); a text-only family sets False, and an
    #: index built with it represents an image by its words (caption, OCR) instead
    sees_images: bool = True
    #: it embeds video items (``Item(video=...)``); the others refuse them as item errors
    sees_video: bool = False

    @classmethod
    def from_pretrained(cls, path: "str | Path", *, device: str = "cpu", **options: Any) -> "ItemEmbedder":
        """Load a checkpoint folder: what every family :func:`~umr.models.registry.load_model` loads
        implements (its keyword-only parameters are the options it takes; ``load_model`` refuses
        any other before loading). An embedder built by hand (tests, wrappers) does not need it."""
        raise NotImplementedError(f"{cls.__name__} is not a family load_model can load: it has no from_pretrained")

    # -- what users call -------------------------------------------------------------------

    def encode_queries(self, items: "Sequence[Item | str] | Item | str", instruction: str | None = None, *,
                       batch_size: int | None = None, show_progress_bar: bool | None = None):
        """Embed queries; ``instruction`` applies to every query that has none of its own.

        A list gives an ``(N, dim)`` matrix (a list of ``(n_tokens, dim)`` arrays for a
        multi-vector model); a single string, item or image gives one vector (one token matrix),
        as sentence-transformers' ``encode`` does.
        """
        single = isinstance(items, SINGLE_VALUES)
        queries = as_items([items] if single else items, is_query=True, instruction=instruction)
        vectors = self.embed(queries, batch_size=batch_size, show_progress_bar=show_progress_bar).vectors
        return vectors[0] if single else vectors

    def encode_candidates(self, items: "Sequence[Item | str] | Item | str", *, batch_size: int | None = None,
                          show_progress_bar: bool | None = None):
        """Embed candidates (documents), always without an instruction; one item gives one vector."""
        single = isinstance(items, SINGLE_VALUES)
        candidates = as_items([items] if single else items, is_query=False)
        vectors = self.embed(candidates, batch_size=batch_size, show_progress_bar=show_progress_bar).vectors
        return vectors[0] if single else vectors

    @abstractmethod
    def embed(self, items: Sequence[Item], *, batch_size: int | None = None,
              show_progress_bar: bool | None = None, on_error: OnError = "raise") -> EmbedResult:
        """Embed items as they are (each says whether it is a query, and its instruction).

        With ``on_error="raise"`` the first bad item raises :class:`ItemError` (bad items found
        by the cost estimate are reported before any model work). With ``"skip"`` bad items
        are left out and listed in :attr:`EmbedResult.errors`; the rest are embedded exactly
        as they would be without them.
        """

    def check(self, item: Item) -> int:
        """The item's cost estimate, or :class:`ItemError` if this model cannot embed it: the
        cheap checks (no forward pass) :meth:`embed` runs first; training vets its data with it."""
        item.modality  # noqa: B018 - raises for an item with neither text nor image
        if item.video is not None and not self.sees_video:
            raise ItemError(item.id, f"{self.name} cannot embed video; use a model that sees video "
                                     f"(qwen3-vl-embedding-2b or -8b)")
        return int(self._cost(item))

    def fits_one_pass(self, costs: Sequence[int]) -> bool:
        """Whether items of these :meth:`check` costs are one forward pass of :meth:`embed`
        (``batch_size`` and ``cost_budget``): how the server's micro-batcher fills a pass."""
        return len(costs) <= 1 or fits_one_pass(len(costs), max(costs), max_items=self.batch_size,
                                                budget=self.cost_budget)

    def vector_options(self) -> dict:
        """Every option this instance was loaded with that changes its vectors (dtype, image
        token bounds, max length, prompts, ...), as plain values. Families that take such
        options override this; it feeds :class:`~umr.models.identity.ModelIdentity`."""
        return {}

    @abstractmethod
    def _cost(self, item: Item) -> int:
        """A cheap estimate of the item's forward cost (e.g. tokens incl. image tokens).

        Raise :class:`ItemError` for an item that cannot be embedded (missing image, ...).
        """

    # -- text windows: what readers need to split long documents into passages ------------

    def text_window(self) -> int | None:
        """How many tokens of a candidate's text one vector reads: the model's sequence limit
        minus its template and special tokens (text beyond it is cut off).

        Readers split long documents into passages of at most this many tokens. The default,
        None, means no known limit: texts are embedded whole and never split.
        """
        return None

    def text_window_beside_image(self, width: int, height: int) -> int | None:
        """How many tokens of a candidate's text one vector reads when the candidate also holds an
        image of ``width x height`` pixels: the room a PDF page's passages get beside the page.

        Families that read text and image in one sequence subtract what the image takes (GME);
        the default, :meth:`text_window`, is for families whose text does not share its window
        with the image (CLIP's own text tower; text models, which never see the image).
        """
        return self.text_window()

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` character offsets in ``text`` of the tokens the model makes of it
        (no special tokens), in order; passages are cut between tokens and counted in them.

        The default is :func:`word_spans` (a subword tokenizer makes at least as many tokens).
        """
        return word_spans(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class Embedder(ItemEmbedder):
    """Maps items (text, image or both) to L2-normalised float32 vectors.

    Subclasses set ``name`` and ``dim`` and implement :meth:`_cost` and :meth:`_embed_batch`.
    """

    #: trained so that the first N dimensions, renormalised, are an embedding too (Matryoshka):
    #: only such families may be swept over dimensions (``umr eval --dims``)
    matryoshka: bool = False
    #: its bfloat16 vectors stay within cosine 0.999 of float32 (measured by the benchmarks):
    #: only such a family defaults to bfloat16 on a CPU (:mod:`umr.core.devices`), and a dtype it
    #: merely defaulted to is not part of its identity (:class:`~umr.models.identity.ModelIdentity`)
    bf16_close: bool = False
    #: the dimension before :meth:`truncate_dim` cut ``dim`` (None: never truncated)
    _untruncated_dim: int | None = None

    @property
    def full_dim(self) -> int:
        """The model's own dimension: ``dim`` unless :meth:`truncate_dim` kept fewer."""
        return self._untruncated_dim or self.dim

    # -- what users call -------------------------------------------------------------------

    def truncate_dim(self, dim: int) -> None:
        """Keep only the first ``dim`` dimensions of every vector, renormalised (Matryoshka)."""
        full = self.full_dim
        if not 1 <= int(dim) <= full:
            raise ValueError(f"dim must be between 1 and {full} for {self.name}, not {dim}")
        self._untruncated_dim = full
        self.dim = int(dim)

    def embed(self, items: Sequence[Item], *, batch_size: int | None = None,
              show_progress_bar: bool | None = None, on_error: OnError = "raise") -> EmbedResult:
        """One L2-normalised ``(dim,)`` row per embedded item (see :meth:`ItemEmbedder.embed`)."""
        costs, errors = check_items(items, self.check, on_error=on_error)
        good = sorted(costs)
        plan = plan_batches([costs[i] for i in good], max_items=batch_size or self.batch_size,
                            budget=self.cost_budget)
        vectors = np.zeros((len(items), self.dim), dtype=np.float32)
        done = np.zeros(len(items), dtype=bool)
        if show_progress_bar is None:
            show_progress_bar = sys.stderr.isatty() and len(good) > (batch_size or self.batch_size)
        loader = self._loader(items, [[good[j] for j in batch] for batch in plan])
        with tqdm(total=len(good), disable=not show_progress_bar, desc=f"embed [{self.name}]",
                  unit="item", dynamic_ncols=True) as bar:
            def run(positions: list[int]) -> np.ndarray:
                if loader is not None:
                    prepared = loader.take(positions)
                    with torch.inference_mode():
                        return self._normalise(self.embed_prepared(prepared)).cpu().numpy()
                return self._run_batch([items[i] for i in positions])

            try:
                for positions, out in run_batches(plan, good, run, on_error=on_error, errors=errors, bar=bar):
                    vectors[positions] = out
                    done[positions] = True
                    if loader is not None:
                        loader.release(positions)
            finally:
                if loader is not None:
                    loader.close()
        indices = np.flatnonzero(done)
        return EmbedResult(vectors=vectors[indices], indices=indices,
                           errors=[errors[i] for i in sorted(errors)])

    # -- what backends implement -----------------------------------------------------------

    @abstractmethod
    def _embed_batch(self, items: list[Item]) -> torch.Tensor | np.ndarray:
        """Raw (unnormalised is fine) vectors of shape ``(len(items), dim)``.

        Raise :class:`ItemError` with ``index`` set to the item's position in ``items`` when
        one item cannot be embedded; the caller drops it and runs the rest again.
        """

    def video_seconds(self, width: int, height: int) -> float:
        """Seconds of a ``width x height`` video one candidate covers at the model's own sampling
        without passing its token budget: how ``umr index`` cuts long videos into segments.
        Families that see video (:attr:`sees_video`) answer; the others have no video window."""
        raise NotImplementedError(f"{self.name} does not embed video")

    # -- shared plumbing ---------------------------------------------------------------------

    @staticmethod
    def _each_item(items: list[Item], prepare):
        """:func:`prepare_each`: backends call this from :meth:`_embed_batch`."""
        return prepare_each(items, prepare)

    def _run_batch(self, items: list[Item]) -> np.ndarray:
        with torch.inference_mode():
            return self._normalised(items).cpu().numpy()

    def _normalised(self, items: list[Item]) -> torch.Tensor:
        return self._normalise(self._embed_batch(items))

    def _normalise(self, raw: torch.Tensor | np.ndarray) -> torch.Tensor:
        out = torch.as_tensor(raw).float()[:, : self.dim]  # a Matryoshka prefix when truncated
        return torch.nn.functional.normalize(out, p=2, dim=-1)

    def _loader(self, items: Sequence[Item], batches: list[list[int]]):
        """A :class:`~umr.models.prefetch.PrefetchingLoader` for a family that prepares items ahead."""
        workers = resolved_workers(self.prefetch_workers, self.device) if isinstance(self, Prefetching) else 0
        if workers < 1 or not batches:
            return None
        return PrefetchingLoader(items, batches, self.prepare, workers=workers, ahead=self.prefetch_ahead)

    def training_forward(self, items: list[Item]) -> torch.Tensor:
        """L2-normalised float32 vectors ``(len(items), dim)``, with gradients.

        The very computation :meth:`embed` runs (same processing, same pooling), so a model
        fine-tuned through it embeds exactly as it was trained; under ``torch.no_grad()`` it
        gives the same vectors without a graph. Bad items raise :class:`ItemError`.
        """
        return self.training_forward_prepared(self._each_item(items, self.prepare_training_item))

    def prepare_training_item(self, item: Item) -> Any:
        """One item made ready for :meth:`training_forward_prepared`, with no model work: what
        training prepares ahead (the prefetching loader) and keeps between GradCache's two
        passes. A :class:`~umr.models.prefetch.Prefetching` family's ``prepare`` (decoding,
        resizing, tokens); for the others the item itself (their forward prepares it)."""
        return self.prepare(item) if isinstance(self, Prefetching) else item

    def training_forward_prepared(self, prepared: list[Any]) -> torch.Tensor:
        """:meth:`training_forward` of items made ready by :meth:`prepare_training_item`."""
        raw = self.embed_prepared(prepared) if isinstance(self, Prefetching) else self._embed_batch(prepared)
        return self._normalise(raw)


class Trainable(ABC):
    """What fine-tuning (:mod:`umr.train`) needs from a family besides
    :meth:`Embedder.training_forward`: the network to update and a way to save it."""

    #: peft ``target_modules`` for LoRA by default (a regex matched against full module names)
    lora_targets: str
    #: module-name prefixes that train fully by default beside LoRA (MM-Embed: its projector)
    train_modules: tuple[str, ...] = ()

    @abstractmethod
    def trainable_module(self) -> torch.nn.Module:
        """The network whose parameters fine-tuning updates; :meth:`training_forward` runs it.

        Training changes it in place (LoRA layers are injected into it, then merged back)."""

    def enable_gradient_checkpointing(self) -> int:
        """Recompute each repeated block's activations in backward instead of keeping them
        (``--grad-checkpointing``); returns how many blocks are wrapped. The default wraps the
        blocks of :meth:`trainable_module` (:func:`~umr.models.checkpointing.checkpoint_blocks`);
        a family whose fast path calls a block's parts directly checkpoints those itself too."""
        return checkpoint_blocks(self.trainable_module())

    @abstractmethod
    def save_pretrained(self, folder: "str | Path") -> None:
        """Write the weights into ``folder`` so that ``load_model(folder)`` embeds as this model does.

        ``folder`` already holds the base model's other files (config, tokenizer, processor).
        """
