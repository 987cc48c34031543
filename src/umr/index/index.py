"""The index users talk to: an embedder bound to a persistent vector store.

>>> from umr.index import Index
>>> index = Index.open("my-index")                     # doctest: +SKIP
>>> for hit in index.search("a cat on a sofa", k=5):   # doctest: +SKIP
...     print(hit.rank, hit.score, hit.id, hit.path or hit.text)

:class:`Index` is a facade over short modules: the model it is bound to
(:mod:`~umr.index.binding`), how an item is shown to that model (:mod:`~umr.index.representation`),
the one search pipeline (:mod:`~umr.index.pipeline`), the store backends
(:mod:`~umr.index.backends`) and keeping it in step with its sources (:mod:`~umr.index.sync`,
:mod:`~umr.index.run`; the id rules are in :mod:`~umr.index.sync`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..core.devices import check_device
from ..core.fingerprint import FileDigests
from ..core.items import Item
from ..core.results import Result, Summary
from ..models.identity import ModelIdentity, model_identity
from ..models.registry import load_model
from ..rerank.base import Reranker
from . import sync
from .backends import DEFAULT_BACKEND, create_store, open_store
from .base import MANIFEST, VectorStore, check_search_args
from .binding import ModelBinding, ModelMismatch, model_record
from .compact import Quantize, check_quantize, check_rescore_k
from .embedding import ChunkEmbedder
from .multivector import store as multivector  # issue 24
from .pipeline import RERANK_K, LocalStages, SearchQuery, as_reranker, query_text, run_search, search_store
from .representation import Unrepresentable, represent
from .run import SNIPPET_CHARS
from .sync import ERRORS_FILE, SKIPPED_FILE, SourceConflict

#: file digests by stat signature, so re-runs over unchanged files do not read them again
DIGESTS_FILE = "file-digests.sqlite"

__all__ = ["DIGESTS_FILE", "ERRORS_FILE", "SKIPPED_FILE", "SNIPPET_CHARS", "Index", "ModelMismatch", "Result",
           "SourceConflict", "Summary", "Unrepresentable", "check_device", "check_search_args", "model_record",
           "query_text"]


class Index:
    """A persistent index: :meth:`create` / :meth:`open`, then :meth:`add`, :meth:`index_corpus`,
    :meth:`search`, :meth:`delete`."""

    def __init__(self, folder: Path, store: VectorStore, *, model=None, model_options: dict[str, Any] | None = None,
                 device: str | None = None, dtype: str | None = None):
        self.folder = Path(folder)
        self.store = store
        self.binding = ModelBinding(self.folder, store, model=model, options=model_options, device=device,
                                    dtype=dtype)
        self._digests: FileDigests | None = None

    # opening -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | os.PathLike, model, *, backend: str = DEFAULT_BACKEND, uri: str | None = None,
               collection: str = "umr", method: str = "exact", ocr: bool | None = None,
               hnsw_m: int = 32, ef_construction: int = 100, ef_search: int = 128,
               model_options: dict[str, Any] | None = None, token_storage: str = "float16",
               pool_factor: int | None = None, quantize: Quantize | None = None,
               rescore_k: int | None = None) -> Index:
        """A new, empty index in ``folder`` for ``model`` (an :class:`Embedder` or a name to load),
        in the store ``backend`` (:mod:`~umr.index.backends`: ``faiss`` or ``milvus``).

        ``model_options`` are the ``load_model`` options (``dtype`` included) the model was or is
        to be loaded with (default: those ``load_model`` recorded in the embedder's identity); they
        are recorded so that a search loads it the same way. A late-interaction model
        (``model.multi_vector``: a :class:`~umr.models.multivector.MultiVectorEmbedder`) gets the
        ``multivector`` store (:mod:`umr.index.multivector.store`): ``method`` ``exact`` or
        ``muvera``, its tokens stored as ``token_storage`` after pooling by ``pool_factor``.

        ``quantize`` (``int8`` or ``binary``, faiss backend) keeps compact codes in memory and the
        float32 vectors on disk, rescoring ``rescore_k`` candidates per search (default
        ``max(20k, 200)``) against them (:mod:`umr.index.compact`).
        """
        check_quantize(quantize)
        check_rescore_k(rescore_k)
        if rescore_k is not None and quantize is None:
            raise ValueError("rescore_k is for a quantised index: give quantize='int8' or 'binary' too")
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, **(model_options or {}))
        if model.multi_vector:  # issue 24 (late interaction)
            if quantize is not None:
                raise ValueError(f"{model.name} is a late-interaction model: its token vectors are compacted "
                                 f"by token_storage (int8 or binary), not quantize")
            backend = multivector.multi_vector_backend(backend)
        elif backend == multivector.BACKEND:
            raise ValueError(f"the {backend} store holds late-interaction models' token vectors; {model.name} "
                             f"makes one vector per item")
        elif method not in ("exact", "hnsw"):
            raise ValueError(f"method must be 'exact' or 'hnsw', not {method!r}")
        if model_options is None:  # a loaded embedder: the options it was loaded with, as recorded
            model_options = dict(model_identity(model).load_options)
        use_ocr = (not model.sees_images) if ocr is None else bool(ocr)
        config = {"model": model_record(model, model_options), "method": method, "ocr": use_ocr,
                  "sees_images": bool(model.sees_images), "hnsw_m": hnsw_m,
                  "ef_construction": ef_construction, "ef_search": ef_search, "sources": {},
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if quantize is not None:
            config.update(quantize=quantize, rescore_k=rescore_k)
        if model.multi_vector:  # issue 24
            config["tokens"] = {"storage": token_storage, "pool_factor": pool_factor}
        store = create_store(folder, backend, dim=model.dim, config=config, uri=uri, collection=collection)
        return cls(folder, store, model=model, model_options=model_options)

    @classmethod
    def open(cls, folder: str | os.PathLike, *, model=None, writable: bool = False,
             device: str | None = None, dtype: str | None = None) -> Index:
        """Open an index; ``model`` (embedder or name) is checked against the one that built it.

        Without ``model`` the recorded model is loaded on the first text/image search, from its
        recorded folder (any working directory will do), on ``device`` (default cpu). ``dtype``
        loads it in another dtype than the one that built the index — the one option allowed to
        differ, because it is asked for explicitly; queries then differ slightly from what the
        index's own dtype would give. A model given by name is loaded here and checked.
        """
        check_device(device)
        store = open_store(folder, writable=writable)
        index = cls(folder, store, model_options=store.config["model"].get("options"), device=device, dtype=dtype)
        if model is not None:
            try:
                index.binding.use(index.load_model(str(model)) if isinstance(model, (str, os.PathLike)) else model,
                                  allow_dtype=dtype is not None)
            except BaseException:
                store.close()
                raise
        return index

    @staticmethod
    def exists(folder: str | os.PathLike) -> bool:
        return (Path(folder) / MANIFEST).is_file()

    def close(self) -> None:
        if self._digests is not None:
            self._digests.close()
            self._digests = None
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # model (umr.index.binding) -------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return self.store.config

    @property
    def model_name(self) -> str:
        return self.binding.name

    @property
    def recorded_identity(self) -> ModelIdentity | None:
        """The identity of the model that built the index (None for indexes built before umr
        recorded it: those are checked by name and dimension)."""
        return self.binding.recorded_identity

    def check_model(self, model, *, allow_dtype: bool = False, recorded_load: bool = False) -> None:
        """Raise :class:`ModelMismatch` unless ``model`` computes the vectors this index holds.

        Weights, family, dimension and vector-changing options must match; the location need
        not (``./m``, ``../x/m`` and ``/abs/m`` are one model), nor a dtype that either side
        merely defaulted to in a bf16-close family (see :mod:`umr.models.identity`).
        ``allow_dtype``: a dtype that differs is accepted. An embedder built by hand (no files)
        is checked by name, dimension and options. ``recorded_load``: ``model`` was loaded from
        the recorded source with the recorded options (the advice says what that means).
        """
        self.binding.check(model, allow_dtype=allow_dtype, recorded_load=recorded_load)

    def model_load_options(self) -> dict[str, Any]:
        """The ``load_model`` options that give this index's vectors here: the recorded ones, and
        this index's dtype if one was asked for.

        Without one, the recorded dtype is loaded, unless it merely followed the building
        machine's default in a bf16-close family: then this machine's default is used
        (interchangeable vectors, and the fast dtype here). So bfloat16 chosen on purpose, or a
        GPU's bfloat16 default of a family that is not bf16-close, loads as bfloat16 on any CPU.
        """
        return self.binding.load_options()

    def load_model(self, name: str | None = None):
        """Load ``name`` (default: the recorded model, from where it was recorded) as the index
        was built (:meth:`model_load_options`), on this index's device."""
        return self.binding.load(name)

    @property
    def model(self):
        return self.binding.model

    def use_model(self, model, *, allow_dtype: bool = False) -> None:
        """Embed with ``model`` from now on (checked against the recorded one first)."""
        self.binding.use(model, allow_dtype=allow_dtype)

    # reading and searching (umr.index.pipeline) --------------------------------------------------

    def __len__(self) -> int:
        return len(self.store)

    def ids(self) -> list[str]:
        return self.store.ids()

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        return self.store.get(ids)

    def modality_counts(self) -> dict[str, int]:
        """Live items per modality, kept by the store (no scan per call)."""
        return self.store.modality_counts()

    def search(self, text: str | None = None, image=None, *, video=None, instruction: str | None = None,
               modality: str | Sequence[str] | None = None, where: dict[str, Any] | None = None,
               k: int = 10, method: str | None = None, ef_search: int | None = None,
               rerank: Reranker | str | os.PathLike | None = None, rerank_k: int = RERANK_K,
               rescore_k: int | None = None) -> list[Result]:
        """Ranked results for one query (text, an image or a video, or text beside either), by
        :func:`~umr.index.pipeline.run_search`. ``video`` (a file path, or a list of frame paths)
        needs a model that sees video (Qwen3-VL-Embedding); results of a video index carry their
        segment's ``start``/``end``.

        ``where`` maps metadata fields to a value (compared as stored, no conversion: 2020 is not
        "2020") or a list of accepted values; see :class:`~umr.index.store.Filter`. An empty or
        blank query, ``k < 1`` and ``ef_search < 1`` raise ``ValueError``. ``rerank`` (a
        :class:`~umr.rerank.Reranker` or a name for :func:`~umr.rerank.load_reranker`) reorders
        the top ``rerank_k`` of ``max(k, rerank_k)`` candidates, and the first ``k`` are returned
        (see :meth:`~umr.rerank.Reranker.rerank`). ``rescore_k``: a quantised index rescores this
        many candidates (0: none) instead of its default.
        """
        query = SearchQuery(text, image, instruction, modality, where, k, method, ef_search, rerank_k, video,
                            rescore_k)
        return run_search(query, LocalStages(self), as_reranker(rerank))

    def search_vectors(self, queries: np.ndarray, *, k: int = 10,
                       modality: str | Sequence[str] | None = None, where: dict[str, Any] | None = None,
                       method: str | None = None, ef_search: int | None = None,
                       rescore_k: int | None = None) -> list[list[Result]]:
        """Top-``k`` results for each query vector (the pipeline's store-search step)."""
        return search_store(self.store, queries, k=k, modality=modality, where=where, method=method,
                            ef_search=ef_search, rescore_k=rescore_k)

    def represent(self, item: Item) -> Item:
        """The item as the model will embed it, with ``metadata["via"]`` saying how.

        A text-only model gets the words of an image (its caption and/or OCR text); an item with
        no words raises :class:`Unrepresentable`.
        """
        return represent(item, sees_images=self.config.get("sees_images", True),
                         use_ocr=bool(self.config.get("ocr")), model_name=self.model_name,
                         image_alone=self.store.backend == multivector.BACKEND)  # issue 24

    # writing (umr.index.sync) ----------------------------------------------------------------------

    @property
    def digests(self) -> FileDigests:
        """The index's memory of file digests (opened on first use)."""
        if self._digests is None:
            self._digests = FileDigests(self.folder / DIGESTS_FILE)
        return self._digests

    def add(self, items: Sequence[Item], *, batch_size: int | None = None) -> Summary:
        """Embed and upsert candidates (each needs an id); returns what happened to each.

        An item whose content (text, image bytes or pixels) is unchanged since it was stored is
        reported ``unchanged`` and not embedded again; ids are taken as given (an upsert). An item
        without content (or a failed one) is reported in the summary's errors; the rest are added.
        A video file is cut into time segments as :meth:`index_corpus` cuts a folder's videos (ids
        ``ID#t=a,b`` with ``start``/``end``; one item ``ID`` when it is no longer than a segment);
        a list of frames, or a file with ``video_start``/``video_end``, is one item.
        """
        return sync.add_items(self, items, batch_size=batch_size)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete items by id; returns how many were there."""
        return self.store.delete(list(ids))

    def compact(self) -> None:
        """Reclaim the space of deleted and replaced rows (the HNSW graph is rebuilt on next add)."""
        self.store.compact()
        sync.update_graph(self.store)

    def id_prefix_for(self, source: str | os.PathLike, id_prefix: str | None = None) -> str:
        """The id prefix of ``source`` in this index (see :mod:`umr.index.sync`), checked.

        A source keeps the prefix it was first indexed with; a prefix another folder already
        uses is refused (:class:`SourceConflict`), since their ids would overwrite each other.
        """
        return sync.id_prefix_for(self.store, source, id_prefix)

    def index_corpus(self, source, *, image_root=None, commit_every: int = 256,
                     commit_seconds: float = 30.0, batch_size: int | None = None, prune: bool = False,
                     progress: Callable[[int], None] | None = None,
                     errors_file: str | os.PathLike | None = None, id_prefix: str | None = None,
                     chunk: bool | None = None, chunk_tokens: int | None = None,
                     chunk_overlap: int | None = None, embedder: ChunkEmbedder | None = None,
                     segment_seconds: float | None = None, segment_overlap: float | None = None) -> Summary:
        """Index a folder / items JSONL / M-BEIR pool; resumable: unchanged items are skipped.

        Work is committed every ``commit_every`` items or ``commit_seconds``; a run killed at any
        point and started again does only what is left. Ids follow :mod:`umr.index.sync`'s rule
        (``id_prefix``); with ``prune`` this source's items that are gone from it are deleted.
        Long texts are split into passages (``chunk``, ``chunk_tokens``, ``chunk_overlap``; default:
        the last run's settings, else on with passages of the model's window); video files become time
        segments (``segment_seconds``, ``segment_overlap``; see :mod:`umr.data.video_segments`). ``embedder`` is where
        the model runs (default: this process; a :class:`~umr.index.ray_embed.RayEmbedder` for a
        Ray cluster).
        """
        return sync.index_corpus(self, source, image_root=image_root, commit_every=commit_every,
                                 commit_seconds=commit_seconds, batch_size=batch_size, prune=prune,
                                 progress=progress, errors_file=errors_file, id_prefix=id_prefix, chunk=chunk,
                                 chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, embedder=embedder,
                                 segment_seconds=segment_seconds, segment_overlap=segment_overlap)
