"""The index users talk to: an embedder bound to a persistent vector store.

>>> from umr.index import Index
>>> index = Index.open("my-index")                     # doctest: +SKIP
>>> for hit in index.search("a cat on a sofa", k=5):   # doctest: +SKIP
...     print(hit.rank, hit.score, hit.id, hit.path or hit.text)

The index records the model that built it — its :class:`~umr.models.identity.ModelIdentity`:
resolved folder (or hub id and revision), files fingerprint, family and every option that
changes vectors — so it is searched from any working directory without naming the model, any
spelling of the same model is accepted, and another model (other weights at the same path, or
other options) is refused with a message naming both.

Item ids: a folder's items are ``<prefix>/<path in the folder>``, the prefix being the folder's
name unless ``id_prefix`` says otherwise (``""``: no prefix); a JSONL or M-BEIR pool's explicit
ids are used as they are (``<prefix>/<id>`` with ``id_prefix``), its lines without an id are
``<file name>/line-N`` (``<folder>/<file name>/line-N`` when another source has that file name). An id already indexed from another source is a reported collision,
never a silent replacement; ``prune`` only deletes items of the source being indexed.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import ocr
from ..core.atomic import write_text_atomic
from ..core.devices import check_device
from ..core.entries import Entry, EntryKind, ReadReport
from ..core.fingerprint import FileDigests, item_fingerprint
from ..core.items import Item, ItemError
from ..core.results import EmbedResult, Result, Summary
from ..data.chunking import Chunker, stale_passages
from ..data.corpus import default_id_prefix, read_corpus
from ..models.identity import ModelIdentity, model_identity
from ..models.multivector import MultiVectorEmbedder  # issue 24 (late interaction)
from ..models.registry import load_model
from ..rerank.registry import load_reranker
from .base import VectorStore, json_line
from .embedding import ChunkEmbedder, LocalEmbedder
from .milvus import MilvusStore
from .store import MANIFEST, Filter, FlatStore, IndexStoreError, read_manifest
from .multivector import store as multivector  # issue 24: the multi-vector store

#: records keep this much of the text they were embedded from, for display
SNIPPET_CHARS = 300
ERRORS_FILE = "errors.jsonl"
#: items found to have no representation under the model, by fingerprint: re-runs skip their OCR
SKIPPED_FILE = "skipped.jsonl"
#: file digests by stat signature, so re-runs over unchanged files do not read them again
DIGESTS_FILE = "file-digests.sqlite"


class ModelMismatch(IndexStoreError):
    """The index was built with another model."""


class SourceConflict(IndexStoreError):
    """A source's ids would clash with another source's, or it was indexed under another prefix."""


class Unrepresentable(Exception):
    """The item has nothing the chosen model can embed (e.g. a photo under a text model)."""

    def __init__(self, item_id: str, reason: str):
        self.item_id, self.reason = item_id, reason
        super().__init__(f"item {item_id!r}: {reason}")


def model_record(model, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the index stores about its model: name and dimension, the ``load_model`` options
    that rebuild it (``dtype`` included), and its identity."""
    return {"name": str(model.name), "dim": int(model.dim), "options": dict(options or {}),
            "identity": model_identity(model).to_dict()}


class Index:
    """A persistent index: :meth:`create` / :meth:`open`, then :meth:`add`, :meth:`index_corpus`,
    :meth:`search`, :meth:`delete`."""

    def __init__(self, folder: Path, store: VectorStore, *, model=None, model_options: dict[str, Any] | None = None,
                 device: str | None = None, dtype: str | None = None):
        self.folder = Path(folder)
        self.store = store
        self._model = model
        self._model_options = model_options or {}
        self._device, self._dtype = device, dtype
        self._digests: FileDigests | None = None

    # opening -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | os.PathLike, model, *, backend: str = "faiss", uri: str | None = None,
               collection: str = "umr", method: str = "exact", ocr: bool | None = None,
               hnsw_m: int = 32, ef_construction: int = 100, ef_search: int = 128,
               model_options: dict[str, Any] | None = None, token_storage: str = "float16",
               pool_factor: int | None = None) -> "Index":
        """A new, empty index in ``folder`` for ``model`` (an :class:`Embedder` or a name to load).

        ``model_options`` are the ``load_model`` options (``dtype`` included) the model was or is
        to be loaded with (default: those ``load_model`` recorded in the embedder's identity); they
        are recorded so that a search loads it the same way. A late-interaction model
        (:class:`~umr.models.multivector.MultiVectorEmbedder`) gets a multi-vector store
        (:mod:`umr.index.multivector.store`): ``method`` ``exact`` or ``muvera``, its tokens stored
        as ``token_storage`` after pooling by ``pool_factor``.
        """
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, **(model_options or {}))
        multi = isinstance(model, MultiVectorEmbedder)  # issue 24 (late interaction)
        if not multi and method not in ("exact", "hnsw"):
            raise ValueError(f"method must be 'exact' or 'hnsw', not {method!r}")
        if multi:  # issue 24
            multivector.refuse_backend(backend)
        if model_options is None:  # a loaded embedder: the options it was loaded with, as recorded
            model_options = dict(model_identity(model).load_options)
        use_ocr = (not model.sees_images) if ocr is None else bool(ocr)
        config = {"model": model_record(model, model_options), "method": method, "ocr": use_ocr,
                  "sees_images": bool(model.sees_images), "hnsw_m": hnsw_m,
                  "ef_construction": ef_construction, "ef_search": ef_search, "sources": {},
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if multi:  # issue 24: token vectors in their own store
            store = multivector.MultiVectorStore.create(folder, dim=model.dim, config=config,
                                                        token_storage=token_storage, pool_factor=pool_factor)
        elif backend == "faiss":
            if uri is not None:
                raise ValueError("--uri is for the Milvus backend; the faiss index lives in its folder")
            store = FlatStore.create(folder, dim=model.dim, config=config)
        elif backend == "milvus":
            store = MilvusStore.create(folder, dim=model.dim, config=config,
                                       uri=uri or str(Path(folder) / "milvus.db"), collection=collection)
        else:
            raise ValueError(f"unknown backend {backend!r}: use faiss or milvus")
        return cls(folder, store, model=model, model_options=model_options)

    @classmethod
    def open(cls, folder: str | os.PathLike, *, model=None, writable: bool = False,
             device: str | None = None, dtype: str | None = None) -> "Index":
        """Open an index; ``model`` (embedder or name) is checked against the one that built it.

        Without ``model`` the recorded model is loaded on the first text/image search, from its
        recorded folder (any working directory will do), on ``device`` (default cpu). ``dtype``
        loads it in another dtype than the one that built the index — the one option allowed to
        differ, because it is asked for explicitly; queries then differ slightly from what the
        index's own dtype would give. A model given by name is loaded here and checked.
        """
        check_device(device)
        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest.get("backend", "faiss") == "milvus":
            store = MilvusStore.open(folder, writable=writable, manifest=manifest)
        elif manifest.get("backend") == multivector.BACKEND:  # issue 24
            store = multivector.MultiVectorStore.open(folder, writable=writable, manifest=manifest)
        else:
            store = FlatStore.open(folder, writable=writable)
        index = cls(folder, store, model_options=store.config["model"].get("options"),
                    device=device, dtype=dtype)
        if model is not None:
            try:
                if isinstance(model, (str, os.PathLike)):
                    model = index.load_model(str(model))
                index.check_model(model, allow_dtype=dtype is not None)
            except BaseException:
                store.close()
                raise
            index._model = model
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

    # model -------------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return self.store.config

    @property
    def model_name(self) -> str:
        return self.config["model"]["name"]

    @property
    def recorded_identity(self) -> ModelIdentity | None:
        """The identity of the model that built the index (None for indexes built before umr
        recorded it: those are checked by name and dimension)."""
        data = self.config["model"].get("identity")
        return ModelIdentity.from_dict(data) if data else None

    def check_model(self, model, *, allow_dtype: bool = False, recorded_load: bool = False) -> None:
        """Raise :class:`ModelMismatch` unless ``model`` computes the vectors this index holds.

        Weights, family, dimension and vector-changing options must match; the location need
        not (``./m``, ``../x/m`` and ``/abs/m`` are one model), nor a dtype that either side
        merely defaulted to in a bf16-close family (see :mod:`umr.models.identity`).
        ``allow_dtype``: a dtype that differs is accepted. An embedder built by hand (no files)
        is checked by name, dimension and options. ``recorded_load``: ``model`` was loaded from
        the recorded source with the recorded options (the advice says what that means).
        """
        recorded = self.recorded_identity
        if isinstance(model, (str, os.PathLike)):
            model = self.load_model(str(model))
        if recorded is None:
            return self._check_legacy(model)
        mine = model_identity(model)
        if not recorded.folder or not mine.folder:  # hand-built on one side: no files to compare
            diffs = ([f"name: {recorded.name!r} vs {mine.name!r}"] if recorded.name != mine.name else [])
            diffs += [d for d in recorded.differences(mine) if not d.startswith(("weights/", "family:"))]
        else:
            diffs = recorded.differences(mine)
        if allow_dtype:
            diffs = [d for d in diffs if not d.startswith("dtype:")]
        if diffs:
            raise ModelMismatch(
                f"index {self.folder} was built with {recorded.describe()}, not {mine.describe()}: "
                f"{'; '.join(diffs)} — vectors of different models cannot be compared; "
                f"{self._mismatch_advice(diffs, recorded_load)}")

    @staticmethod
    def _mismatch_advice(diffs: list[str], recorded_load: bool) -> str:
        """What to do about a mismatch, claiming only what ``diffs`` shows."""
        if not recorded_load:
            hint = " (or search with --dtype to use another dtype on purpose)" \
                if all(d.startswith("dtype:") for d in diffs) else ""
            return f"search it without --model (the recorded model loads), or build a new index{hint}"
        if any(d.startswith("weights/") for d in diffs):
            return "the recorded model's files changed since the index was built: restore them, or build a new index"
        return ("the recorded model's files are unchanged, but loaded here with the recorded options it computes "
                "other vectors (another umr version?): build a new index")

    def _check_legacy(self, model) -> None:
        recorded = self.config["model"]
        name, dim = str(model.name), int(model.dim)
        if name != recorded["name"] or dim != recorded["dim"]:
            raise ModelMismatch(
                f"index {self.folder} was built with model {recorded['name']!r} ({recorded['dim']}-d), "
                f"not {name!r} ({dim}-d): vectors of different models cannot be compared. Search it "
                f"with --model {recorded['name']} (or no --model), or build a new index for {name!r}")

    def model_load_options(self) -> dict[str, Any]:
        """The ``load_model`` options that give this index's vectors here: the recorded ones, and
        this index's dtype if one was asked for.

        Without one, the recorded dtype is loaded, unless it merely followed the building
        machine's default in a bf16-close family: then this machine's default is used
        (interchangeable vectors, and the fast dtype here). So bfloat16 chosen on purpose, or a
        GPU's bfloat16 default of a family that is not bf16-close, loads as bfloat16 on any CPU.
        """
        recorded = self.recorded_identity
        options = dict(self._model_options)
        if self._dtype is not None:
            options["dtype"] = self._dtype
        elif "dtype" not in options and recorded is not None and not recorded.dtype_follows_machine \
                and "dtype" in recorded.options:
            options["dtype"] = recorded.options["dtype"]
        return options

    def load_model(self, name: str | None = None):
        """Load ``name`` (default: the recorded model, from where it was recorded) as the index
        was built (:meth:`model_load_options`), on this index's device."""
        if name is None:
            recorded = self.recorded_identity
            name = recorded.source if recorded is not None else self.model_name
        return load_model(name, device=self._device or "cpu", **self.model_load_options())

    @property
    def model(self):
        if self._model is None:
            model = self.load_model()
            self.check_model(model, allow_dtype=self._dtype is not None, recorded_load=True)
            self._model = model
        return self._model

    def use_model(self, model, *, allow_dtype: bool = False) -> None:
        """Embed with ``model`` from now on (checked against the recorded one first)."""
        self.check_model(model, allow_dtype=allow_dtype)
        self._model = model

    # reading -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.store)

    def ids(self) -> list[str]:
        return self.store.ids()

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        return self.store.get(ids)

    def modality_counts(self) -> dict[str, int]:
        """Live items per modality, kept by the store (no scan per call)."""
        return self.store.modality_counts()

    def search(self, text: str | None = None, image=None, *, instruction: str | None = None,
               modality: str | Sequence[str] | None = None, where: dict[str, Any] | None = None,
               k: int = 10, method: str | None = None, ef_search: int | None = None,
               rerank=None, rerank_k: int = 10) -> list[Result]:
        """Ranked results for one query (text, image or both).

        ``where`` maps metadata fields to a value (compared as stored, no conversion: 2020 is not
        "2020") or a list of accepted values; see :class:`~umr.index.store.Filter`. An empty or
        blank query, ``k < 1`` and ``ef_search < 1`` raise ``ValueError``. ``rerank`` (a
        :class:`~umr.rerank.Reranker` or a name for :func:`~umr.rerank.load_reranker`) reorders
        the top ``rerank_k`` results (see :meth:`~umr.rerank.Reranker.rerank`).
        """
        text = query_text(text, image)
        check_search_args(k, ef_search)
        query = Item.query(text=text, image=image, instruction=instruction, id="query")
        original = Item.query(text=text, image=image, instruction=instruction, id="query")
        query = self.represent(query)
        vector = self.model.embed([query], show_progress_bar=False).vectors
        depth = max(k, rerank_k) if rerank is not None else k
        results = self.search_vectors(vector, k=depth, modality=modality, where=where,
                                      method=method, ef_search=ef_search)[0]
        if rerank is None:
            return results
        if isinstance(rerank, (str, os.PathLike)):
            rerank = load_reranker(rerank)
        return rerank.rerank(original, results, k=rerank_k)[:k]

    def search_vectors(self, queries: np.ndarray, *, k: int = 10,
                       modality: str | Sequence[str] | None = None, where: dict[str, Any] | None = None,
                       method: str | None = None, ef_search: int | None = None) -> list[list[Result]]:
        check_search_args(k, ef_search)
        if isinstance(self.store, multivector.MultiVectorStore):  # issue 24: a token matrix per query
            queries = self.store.check_queries(queries)
        else:
            queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
            if queries.shape[1] != self.store.dim:
                raise ValueError(f"query vectors are {queries.shape[1]}-d; the index holds {self.store.dim}-d")
        flt = Filter.make(modality, where)
        hits = self.store.search(queries, k, filter=flt, method=method, ef_search=ef_search)
        return [[Result.of(rank, hit) for rank, hit in enumerate(row, start=1)] for row in hits]

    # representing items ----------------------------------------------------------------------

    def represent(self, item: Item) -> Item:
        """The item as the model will embed it, with ``metadata["via"]`` saying how.

        A text-only model gets the words of an image (its caption and/or OCR text); an item with
        no words raises :class:`Unrepresentable`.
        """
        sees = self.config.get("sees_images", True)
        if item.image is None:
            item.metadata = {**item.metadata, "via": "text"}
            return item
        late = self.store.backend == multivector.BACKEND  # issue 24: late interaction embeds a page image alone
        if sees and late and item.text is not None and not item.is_query:
            item = Item(image=item.image, instruction=item.instruction, is_query=item.is_query, id=item.id,
                        metadata=item.metadata)
        if sees:
            via = "pixels" if item.text is None else "pixels+text"
            item.metadata = {**item.metadata, "via": via}
            return item
        parts, via = [], []
        if item.text:
            parts.append(item.text)
            via.append("text layer" if item.metadata.get("kind") == EntryKind.PDF_PAGE else "caption")
        if self.config.get("ocr") and not (item.text and item.metadata.get("kind") == EntryKind.PDF_PAGE):
            words = ocr.read_text(item.image, item_id=item.id)
            if words:
                parts.append(words)
                via.append("ocr")
        if not parts:
            how = "OCR found no words in it" if self.config.get("ocr") else "OCR is off"
            raise Unrepresentable(item.id, f"no usable representation under {self.model_name}: a text-only "
                                           f"model cannot see pixels, {how}, and it has no caption "
                                           f"(add NAME.txt, or index with an MLLM such as gme-2b)")
        return Item(text="\n".join(parts), image=None, instruction=item.instruction,
                    is_query=item.is_query, id=item.id, metadata={**item.metadata, "via": "+".join(via)})

    # writing -----------------------------------------------------------------------------------

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
        """
        entries = []
        for item in items:
            if item.id is None:
                raise ValueError("items added to an index need ids")
            problem = item.problem
            entries.append(ItemError(str(item.id), problem) if problem is not None
                           else _direct_entry(item, self.digests))
        summary = Summary()
        self._run(entries, summary, batch_size=batch_size, commit_every=10**9)
        self.digests.save()
        self._update_graph()
        return summary

    def _update_graph(self) -> None:
        """HNSW indexes: let the store keep its graph current (FAISS extends it in large steps)."""
        if self.config.get("method") != "hnsw":
            return
        self.store.update_graph(m=int(self.config.get("hnsw_m", 32)),
                                ef_construction=int(self.config.get("ef_construction", 100)))

    def delete(self, ids: Iterable[str]) -> int:
        """Delete items by id; returns how many were there."""
        return self.store.delete(list(ids))

    def compact(self) -> None:
        """Reclaim the space of deleted and replaced rows (the HNSW graph is rebuilt on next add)."""
        self.store.compact()
        self._update_graph()

    def id_prefix_for(self, source: str | os.PathLike, id_prefix: str | None = None) -> str:
        """The id prefix of ``source`` in this index (see the module docstring), checked.

        A source keeps the prefix it was first indexed with; a prefix another folder already
        uses is refused (:class:`SourceConflict`), since their ids would overwrite each other.
        """
        key = str(Path(source).resolve())
        given = None if id_prefix is None else id_prefix.strip("/")
        sources = self.config.get("sources") or {}
        if key in sources:
            recorded = sources[key]
            if given is not None and given != recorded:
                raise SourceConflict(
                    f"{source} was indexed with --id-prefix {recorded!r}; its ids would all change. "
                    f"Drop --id-prefix (or use {recorded!r}), or delete its items first")
            return recorded
        if given is not None:
            prefix = given
        elif any(r.get("source") == key for r in self.store.records()):
            prefix = ""  # indexed before umr prefixed ids: keep its ids as they are
        else:
            prefix = default_id_prefix(source)
        for other, used in sources.items():
            if prefix and used == prefix and other != key:
                raise SourceConflict(f"ids of {other} already start with {prefix + '/'!r}; give {source} "
                                     f"its own prefix with --id-prefix NAME")
        return prefix

    def index_corpus(self, source, *, image_root=None, commit_every: int = 256,
                     commit_seconds: float = 30.0, batch_size: int | None = None, prune: bool = False,
                     progress: Callable[[int], None] | None = None,
                     errors_file: str | os.PathLike | None = None, id_prefix: str | None = None,
                     chunk: bool | None = None, chunk_tokens: int | None = None,
                     chunk_overlap: int | None = None, embedder: ChunkEmbedder | None = None) -> Summary:
        """Index a folder / items JSONL / M-BEIR pool; resumable: unchanged items are skipped.

        Work is committed every ``commit_every`` items or ``commit_seconds``; a run killed at any
        point and started again does only what is left. Ids follow the module docstring's rule
        (``id_prefix``); with ``prune`` this source's items that are gone from it are deleted.
        Long texts are split into passages (``chunk``, ``chunk_tokens``, ``chunk_overlap``; see
        :meth:`_chunker`). ``embedder`` is where the model runs (default: this process; a
        :class:`~umr.index.ray_embed.RayEmbedder` for a Ray cluster).
        """
        started = time.monotonic()
        summary = Summary(read=ReadReport())
        chunk = False if self.store.backend == multivector.BACKEND else chunk  # issue 24: pages stay whole
        chunker = self._chunker(chunk=chunk, tokens=chunk_tokens, overlap=chunk_overlap)
        source_key = str(Path(source).resolve())
        prefix = self.id_prefix_for(source, id_prefix)
        sources = dict(self.config.get("sources") or {})
        if sources.get(source_key) != prefix:
            self.store.set_config({**self.config, "sources": {**sources, source_key: prefix}})
        errors_path = Path(errors_file) if errors_file else self.folder / ERRORS_FILE
        errors_path.parent.mkdir(parents=True, exist_ok=True)
        skipped_path = self.folder / SKIPPED_FILE
        skip_cache = _read_skip_cache(skipped_path)
        line_ids = dict(self.config.get("line_ids") or {})
        if source_key not in line_ids:  # decided once per source, so its ids never change
            line_ids[source_key] = _line_id_base(source_key, line_ids)
            self.store.set_config({**self.config, "line_ids": line_ids})
        entries = (_prefixed(entry, prefix, line_ids[source_key])
                   for entry in read_corpus(source, image_root=image_root, digests=self.digests,
                                            chunker=chunker, report=summary.read))
        with open(errors_path, "w", encoding="utf-8") as err_handle, \
                open(skipped_path, "a", encoding="utf-8") as skip_handle:
            seen = self._run(entries, summary, batch_size=batch_size,
                             commit_every=commit_every, commit_seconds=commit_seconds,
                             progress=progress, err_handle=err_handle, source=source_key,
                             skip_cache=skip_cache, skip_handle=skip_handle, embedder=embedder)
            # the reader names what it passed over within the source; the index says it with ids
            summary.read.ignored = [(f"{prefix}/{name}" if prefix else name, kind, reason)
                                    for name, kind, reason in summary.read.ignored]
            summary.read.truncated = [f"{prefix}/{name}" if prefix else name for name in summary.read.truncated]
            for name, _, reason in summary.read.ignored:
                err_handle.write(json_line({"id": name, "path": None, "line": None, "kind": "ignored",
                                             "error": reason}) + "\n")
        self.digests.save()
        # keep only this run's entries (other sources' entries stay too)
        current = {e["id"] for e in summary.skipped}
        keep = [{"id": i, "fingerprint": fp, "reason": why} for i, (fp, why) in skip_cache.items()
                if i in current or i not in seen]
        write_text_atomic(skipped_path, "".join(json_line(e) + "\n" for e in keep))
        if prune:
            stale = [r["id"] for r in self.store.records()
                     if r.get("source") == source_key and r["id"] not in seen]
            summary.deleted += self.store.delete(stale)
        else:  # a text split differently than before: its old passages (or whole item) go
            candidates = stale_passages(self.store.ids(), seen)
            stale = [r["id"] for r in self.store.get(candidates) if r is not None and r.get("source") == source_key]
            summary.deleted += self.store.delete(stale)
        self._update_graph()
        summary.seconds = time.monotonic() - started
        return summary

    def _chunker(self, *, chunk: bool | None = None, tokens: int | None = None,
                overlap: int | None = None) -> Chunker:
        """How this index splits long texts: the settings given, else those recorded by the last
        run (default: on, passages of the model's window, overlap 1/8); a size turns splitting on.
        New settings are recorded."""
        recorded = self.config.get("chunking") or {}
        if chunk is None:  # a size given turns splitting on
            chunk = tokens is not None or overlap is not None or recorded.get("enabled", True)
        if tokens is None:
            tokens = recorded.get("tokens")
            if overlap is None:
                overlap = recorded.get("overlap")
        chunker = Chunker(self.model, tokens=tokens, overlap=overlap, enabled=bool(chunk))
        if chunker.settings() != recorded:
            self.store.set_config({**self.config, "chunking": chunker.settings()})
        return chunker

    def _run(self, entries, summary: Summary, *, batch_size=None, commit_every=256,
             commit_seconds=30.0, progress=None, err_handle=None, source=None,
             skip_cache: dict | None = None, skip_handle=None,
             embedder: ChunkEmbedder | None = None) -> set[str]:
        """Plan each entry against the stored fingerprints, represent what must be embedded,
        embed it in chunks (``embedder``, default this process's model), commit every
        ``commit_every`` items or ``commit_seconds``.

        Returns every id the source holds (what ``prune`` keeps).
        """
        run = _Run(self, summary, source=source, progress=progress, err_handle=err_handle,
                   skip_cache={} if skip_cache is None else skip_cache, skip_handle=skip_handle)
        committer = _Committer(self.store, summary, commit_every=commit_every, commit_seconds=commit_seconds)
        chunk_size = max(1, min(commit_every, (batch_size or getattr(self.model, "batch_size", 32)) * 2))
        embedder = embedder or LocalEmbedder(self.model)
        chunks: deque[list[tuple[Any, Item, bool]]] = deque()

        def ready_chunks():
            chunk: list[tuple[Any, Item, bool]] = []
            for entry in entries:
                planned = run.plan(entry)
                if planned is None:
                    continue
                ready = run.represent(*planned)
                if ready is None:
                    continue
                chunk.append(ready)
                if len(chunk) >= chunk_size:
                    chunks.append(chunk)
                    yield [item for _, item, _ in chunk]
                    chunk = []
            if chunk:
                chunks.append(chunk)
                yield [item for _, item, _ in chunk]

        # the embedder may read chunks ahead; results come back in order, each for the oldest
        for result in embedder.map(ready_chunks(), batch_size=batch_size):
            committer.add(*run.accept(chunks.popleft(), result))
        committer.add([], np.zeros((0, self.store.dim), np.float32), run.dropped_updates())
        committer.flush()
        return run.seen


class _Run:
    """The per-entry steps of one indexing run and what they have learned so far."""

    def __init__(self, index: Index, summary: Summary, *, source, progress, err_handle, skip_cache,
                 skip_handle):
        self.index, self.summary, self.source = index, summary, source
        self.progress, self.err_handle = progress, err_handle
        self.skip_cache, self.skip_handle = skip_cache, skip_handle
        self.model = index.model
        self.known = index.store.hashes()
        #: every id the source holds (kept by --prune)
        self.seen: set[str] = set()
        # ids whose item loaded (to be embedded) or is unchanged: a later duplicate is skipped;
        # an entry that failed to load does not take its id, so a good duplicate after it is used
        self.taken: dict[str, str | None] = {}
        # ids whose line failed while an older version is stored: that version is dropped at the
        # end, unless a duplicate of the id was indexed (or found unchanged) in the meantime
        self.failed_updates: list[str] = []

    def report(self, kind: str, item_id, reason: str, path=None, line=None) -> None:
        entry = {"id": item_id, "path": path, "line": line, "kind": kind, "error": reason}
        (self.summary.errors if kind == "error" else self.summary.skipped).append(entry)
        if self.err_handle is not None:
            self.err_handle.write(json_line(entry) + "\n")
            self.err_handle.flush()

    def done(self, n: int = 1) -> None:
        if self.progress:
            self.progress(n)

    def plan(self, entry):
        """``(entry, stored hash or None)`` for an entry to embed; None when it is unchanged,
        a duplicate, a collision with another source, or already known to be unrepresentable."""
        if isinstance(entry, ItemError):
            self.report("error", entry.item_id, entry.reason, line=entry.line)
            self.done()
            return None
        fingerprint = _record_hash(entry.fingerprint, entry.meta, self.source)
        self.seen.add(entry.id)
        if entry.id in self.taken:
            first = self.taken[entry.id]
            self.report("error", entry.id, "duplicate id in the corpus: an earlier entry with this id"
                        + (f" ({first})" if first and first != entry.path else "")
                        + " is used, this one was skipped", entry.path)
            self.done()
            return None
        refused = self.index.store.check_id(entry.id)
        if refused is not None:
            self.report("error", entry.id[:80] + ("..." if len(entry.id) > 80 else ""), refused, entry.path)
            self.done()
            return None
        old = self.known.get(entry.id)
        if old is not None and old == fingerprint:
            self.taken[entry.id] = entry.path
            self.summary.unchanged += 1
            self.done()
            return None
        if old is not None and self.source is not None:
            owner = (self.index.store.get([entry.id])[0] or {}).get("source")
            if owner != self.source:
                self.seen.discard(entry.id)
                self.report("error", entry.id, f"id collision: {entry.id!r} is already indexed from "
                            f"{owner or 'Index.add'}; this one was skipped (give one of the sources "
                            f"an --id-prefix, or other ids)", entry.path)
                self.done()
                return None
        cached = self.skip_cache.get(entry.id)
        if cached is not None and cached[0] == fingerprint and old is None:
            self.report("no representation", entry.id, cached[1], entry.path)
            self.done()
            return None
        entry.fingerprint = fingerprint
        return entry, old

    def represent(self, entry, old):
        """``(entry, item as the model sees it, is_update)``, or None when it cannot be loaded or
        has no representation under the model (reported; a stored old version is dropped)."""
        try:
            item = entry.load()
            item.metadata = {**item.metadata, **entry.meta, "kind": entry.kind}
            item = self.index.represent(item)
        except ItemError as exc:
            self.report("error", entry.id, exc.reason, entry.path)
            if old is not None:  # the file changed and is now bad: drop its old version
                self.failed_updates.append(entry.id)
            self.done()
            return None
        except Unrepresentable as exc:
            self.report("no representation", entry.id, exc.reason, entry.path)
            self.skip_cache[entry.id] = (entry.fingerprint, exc.reason)
            if self.skip_handle is not None:
                self.skip_handle.write(json_line({"id": entry.id, "fingerprint": entry.fingerprint,
                                                   "reason": exc.reason}) + "\n")
                self.skip_handle.flush()
            if old is not None:
                self.failed_updates.append(entry.id)
            self.done()
            return None
        self.taken[entry.id] = entry.path
        return entry, item, old is not None

    def accept(self, chunk, result: EmbedResult) -> tuple[list[dict], np.ndarray, list[str]]:
        """Records and vectors of the chunk's items that embedded, and the ids whose stored
        version must go because their new content cannot be embedded."""
        drop = []
        for err in result.errors:
            entry, _item, is_update = chunk[err.index]
            self.report("error", entry.id, err.reason, entry.path)
            if is_update:
                drop.append(entry.id)
        records = []
        for j in result.indices:
            entry, item, is_update = chunk[j]
            records.append(_record(entry, item, self.source))
            if is_update:
                self.summary.updated += 1
            else:
                self.summary.added += 1
        self.done(len(chunk))
        return records, multivector.stored_vectors(result.vectors), drop  # issue 24: or token matrices

    def dropped_updates(self) -> list[str]:
        return list(dict.fromkeys(i for i in self.failed_updates if i not in self.taken))


class _Committer:
    """Collects embedded records and deletions; commits every N items or T seconds."""

    def __init__(self, store, summary: Summary, *, commit_every: int, commit_seconds: float):
        self.store, self.summary = store, summary
        self.commit_every, self.commit_seconds = commit_every, commit_seconds
        self.records: list[dict] = []
        self.vectors: list[np.ndarray] = []
        self.deletes: list[str] = []
        self.last = time.monotonic()

    def add(self, records: list[dict], vectors: np.ndarray, deletes: list[str]) -> None:
        self.records.extend(records)
        if len(records):
            self.vectors.append(vectors)
        self.deletes.extend(deletes)
        if len(self.records) >= self.commit_every or time.monotonic() - self.last >= self.commit_seconds:
            self.flush()

    def flush(self) -> None:
        if self.records or self.deletes:
            vectors = multivector.join_vectors(self.vectors, self.store.dim)  # issue 24: rows or token matrices
            self.store.commit(self.records, vectors, delete_ids=self.deletes)
            self.summary.deleted += len(self.deletes)
        self.records, self.vectors, self.deletes = [], [], []
        self.last = time.monotonic()


def _read_skip_cache(path: Path) -> dict[str, tuple[str, str]]:
    """id -> (fingerprint, reason); a line cut short by a crash is ignored."""
    cache: dict[str, tuple[str, str]] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    cache[entry["id"]] = (entry["fingerprint"], entry["reason"])
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        pass
    return cache


def _direct_entry(item: Item, digests: FileDigests) -> Entry:
    """An item given to :meth:`Index.add` as a corpus entry (its kind is its modality)."""
    image = item.image
    if isinstance(image, (str, os.PathLike)):  # stored resolved: results open from anywhere
        image = str(Path(image).expanduser().resolve())
    candidate = Item(text=item.text, image=image, id=str(item.id), metadata=dict(item.metadata))

    def load() -> Item:
        return Item(text=candidate.text, image=candidate.image, id=candidate.id, metadata=dict(candidate.metadata))

    return Entry(str(item.id), item_fingerprint(candidate, digests=digests), load,
                 image if isinstance(image, str) else None, EntryKind(candidate.modality.value), dict(item.metadata))


def _line_id_base(source_key: str, taken: dict[str, str]) -> str:
    """What ids of a JSONL's lines without an id start with: the file's name, or its folder and
    name when another source already uses that (two folders' ``items.jsonl``), else its path."""
    path = Path(source_key)
    for base in (path.name, f"{path.parent.name}/{path.name}", path.as_posix().lstrip("/")):
        if base not in taken.values():
            return base
    return path.as_posix()


def _prefixed(entry, prefix: str, source_name: str):
    """The entry under this source's ids: ``prefix/id``; ids a JSONL line did not give are
    ``<file name>/line-N`` without a prefix."""
    if isinstance(entry, ItemError):
        if entry.item_id is not None and prefix:
            return ItemError(f"{prefix}/{entry.item_id}", entry.reason, line=entry.line)
        return entry
    if prefix:
        entry.id = f"{prefix}/{entry.id}"
    elif not entry.explicit_id:
        entry.id = f"{source_name}/{entry.id}"
    return entry


def _record_hash(content: str, meta: dict[str, Any], source: str | None) -> str:
    """What a stored record stands for: its content fingerprint, its metadata (a change is
    stored) and its source (the same id from another source is a collision, not "unchanged")."""
    import hashlib

    payload = json.dumps([content, meta, source], sort_keys=True, default=str).encode("ascii")
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def query_text(text, image) -> str | None:
    """The query's text, or ``ValueError`` for an empty, blank or unencodable query."""
    if text is not None and not isinstance(text, str):
        raise TypeError(f"query text must be a string, not {type(text).__name__}")
    if text is not None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the query text is not valid UTF-8 (undecodable bytes in the argument)") from None
        if not text.strip():
            if image is None:
                raise ValueError("the query is empty: give some text, an image, or both")
            text = None
    if text is None and image is None:
        raise ValueError("a query needs text, an image, or both")
    return text


def check_search_args(k, ef_search) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive whole number of results, not {k!r}")
    if ef_search is not None and (isinstance(ef_search, bool) or not isinstance(ef_search, (int, np.integer))
                                  or ef_search < 1):
        raise ValueError(f"ef_search must be a positive whole number, not {ef_search!r}")


def _record(entry: Entry, item: Item, source: str | None) -> dict[str, Any]:
    meta = {k: v for k, v in item.metadata.items() if k not in ("via", "kind")}
    modality = _source_modality(entry, item)
    text = item.text[:SNIPPET_CHARS] if item.text else None
    record = {"id": entry.id, "hash": entry.fingerprint, "modality": modality, "path": entry.path,
              "text": text, "via": item.metadata.get("via"), "meta": _jsonable(meta)}
    if source is not None:
        record["source"] = source
    return record


def _source_modality(entry: Entry, item: Item) -> str:
    """The modality of the item as it is in the corpus (a photo stays "image" under a text model)."""
    via = item.metadata.get("via", "")
    kept_text = "caption" in via or "text" in via or (item.image is not None and bool(item.text))
    return entry.kind.modality(kept_text=kept_text).value


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))

