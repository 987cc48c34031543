"""The index users talk to: an embedder bound to a persistent vector store.

>>> from umr.index import Index
>>> index = Index.open("my-index")                     # doctest: +SKIP
>>> for hit in index.search("a cat on a sofa", k=5):   # doctest: +SKIP
...     print(hit.rank, hit.score, hit.id, hit.path or hit.text)

The index records the model (name, dimension, options) and the settings that built it; opening
it with another model is refused with a message naming both, because vectors of different
models are not comparable.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..types import Item, ItemError, Modality
from .base import VectorStore
from .store import MANIFEST, Filter, FlatStore, Hit, IndexStoreError, read_manifest

#: records keep this much of the text they were embedded from, for display
SNIPPET_CHARS = 300
ERRORS_FILE = "errors.jsonl"
#: items found to have no representation under the model, by fingerprint: re-runs skip their OCR
SKIPPED_FILE = "skipped.jsonl"


class ModelMismatch(IndexStoreError):
    """The index was built with another model."""


class Unrepresentable(Exception):
    """The item has nothing the chosen model can embed (e.g. a photo under a text model)."""

    def __init__(self, item_id: str, reason: str):
        self.item_id, self.reason = item_id, reason
        super().__init__(f"item {item_id!r}: {reason}")


@dataclass
class Result:
    rank: int
    score: float
    id: str
    modality: str
    path: str | None
    text: str | None
    via: str | None
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "id": self.id, "modality": self.modality,
                "path": self.path, "text": self.text, "via": self.via, "meta": self.meta}


@dataclass
class Summary:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    #: items with no representation under the model (e.g. photos without text, text-only model)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
                f"deleted {self.deleted}, skipped {len(self.skipped)}, errors {len(self.errors)}")


def sees_images(model) -> bool:
    """Whether the model embeds pixels (MLLMs, CLIP) or only text."""
    flag = getattr(model, "sees_images", None)
    if flag is not None:
        return bool(flag)
    from ..models.text import TextEmbedder

    return not isinstance(model, TextEmbedder)


def model_record(model, options: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": str(model.name), "dim": int(model.dim), "options": dict(options or {})}


class Index:
    """A persistent index: :meth:`create` / :meth:`open`, then :meth:`add`, :meth:`index_corpus`,
    :meth:`search`, :meth:`delete`."""

    def __init__(self, folder: Path, store: VectorStore, *, model=None, model_options: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.store = store
        self._model = model
        self._model_options = model_options or {}

    # opening -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | os.PathLike, model, *, backend: str = "faiss", uri: str | None = None,
               collection: str = "umr", method: str = "exact", ocr: bool | None = None,
               hnsw_m: int = 32, ef_construction: int = 100, ef_search: int = 128,
               model_options: dict[str, Any] | None = None) -> "Index":
        """A new, empty index in ``folder`` for ``model`` (an :class:`Embedder` or a name to load)."""
        if method not in ("exact", "hnsw"):
            raise ValueError(f"method must be 'exact' or 'hnsw', not {method!r}")
        if isinstance(model, (str, os.PathLike)):
            from ..models.registry import load_model

            model = load_model(model, **(model_options or {}))
        use_ocr = (not sees_images(model)) if ocr is None else bool(ocr)
        config = {"model": model_record(model, model_options), "method": method, "ocr": use_ocr,
                  "sees_images": sees_images(model), "hnsw_m": hnsw_m,
                  "ef_construction": ef_construction, "ef_search": ef_search,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if backend == "faiss":
            if uri is not None:
                raise ValueError("--uri is for the Milvus backend; the faiss index lives in its folder")
            store = FlatStore.create(folder, dim=model.dim, config=config)
        elif backend == "milvus":
            from .milvus import MilvusStore

            store = MilvusStore.create(folder, dim=model.dim, config=config,
                                       uri=uri or str(Path(folder) / "milvus.db"), collection=collection)
        else:
            raise ValueError(f"unknown backend {backend!r}: use faiss or milvus")
        return cls(folder, store, model=model, model_options=model_options)

    @classmethod
    def open(cls, folder: str | os.PathLike, *, model=None, writable: bool = False) -> "Index":
        """Open an index; ``model`` (embedder or name) is checked against the one that built it.

        Without ``model`` the recorded model is loaded on the first text/image search.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest.get("backend", "faiss") == "milvus":
            from .milvus import MilvusStore

            store = MilvusStore.open(folder, writable=writable, manifest=manifest)
        else:
            store = FlatStore.open(folder, writable=writable)
        index = cls(folder, store, model_options=store.config["model"].get("options"))
        if model is not None:
            try:
                index.check_model(model)
            except BaseException:
                store.close()
                raise
            if not isinstance(model, (str, os.PathLike)):
                index._model = model
        return index

    @staticmethod
    def exists(folder: str | os.PathLike) -> bool:
        return (Path(folder) / MANIFEST).is_file()

    def close(self) -> None:
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

    def check_model(self, model) -> None:
        recorded = self.config["model"]
        name = str(model) if isinstance(model, (str, os.PathLike)) else str(model.name)
        dim = None if isinstance(model, (str, os.PathLike)) else int(model.dim)
        if name != recorded["name"] or (dim is not None and dim != recorded["dim"]):
            shown = f"{name!r}" + (f" ({dim}-d)" if dim is not None else "")
            raise ModelMismatch(
                f"index {self.folder} was built with model {recorded['name']!r} ({recorded['dim']}-d), "
                f"not {shown}: vectors of different models cannot be compared. Search it with "
                f"--model {recorded['name']} (or no --model), or build a new index for {name!r}")

    @property
    def model(self):
        if self._model is None:
            from ..models.registry import load_model

            model = load_model(self.model_name, **self._model_options)
            self.check_model(model)
            self._model = model
        return self._model

    # reading -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.store)

    def ids(self) -> list[str]:
        return self.store.ids()

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        return self.store.get(ids)

    def search(self, text: str | None = None, image=None, *, instruction: str | None = None,
               modality: str | Sequence[str] | None = None, where: dict[str, Any] | None = None,
               k: int = 10, method: str | None = None, ef_search: int | None = None) -> list[Result]:
        """Ranked results for one query (text, image or both).

        ``where`` maps metadata fields to a value (compared as stored, no conversion: 2020 is not
        "2020") or a list of accepted values; see :class:`~umr.index.store.Filter`.
        """
        if text is None and image is None:
            raise ValueError("a query needs text, an image, or both")
        query = Item.query(text=text, image=image, instruction=instruction, id="query")
        query = self.represent(query)
        vector = self.model.embed([query], show_progress_bar=False).vectors
        return self.search_vectors(vector, k=k, modality=modality, where=where,
                                   method=method, ef_search=ef_search)[0]

    def search_vectors(self, queries: np.ndarray, *, k: int = 10,
                       modality: str | Sequence[str] | None = None, where: dict[str, Any] | None = None,
                       method: str | None = None, ef_search: int | None = None) -> list[list[Result]]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.store.dim:
            raise ValueError(f"query vectors are {queries.shape[1]}-d; the index holds {self.store.dim}-d")
        flt = Filter.make(modality, where)
        hits = self.store.search(queries, k, filter=flt, method=method, ef_search=ef_search)
        return [[_result(rank, hit) for rank, hit in enumerate(row, start=1)] for row in hits]

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
        if sees:
            via = "pixels" if item.text is None else "pixels+text"
            item.metadata = {**item.metadata, "via": via}
            return item
        parts, via = [], []
        if item.text:
            parts.append(item.text)
            via.append("text layer" if item.metadata.get("kind") == "pdf page" else "caption")
        if self.config.get("ocr") and not (item.text and item.metadata.get("kind") == "pdf page"):
            from ..ocr import read_text

            words = read_text(item.image, item_id=item.id)
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

    def add(self, items: Sequence[Item], *, batch_size: int | None = None) -> Summary:
        """Embed and upsert candidates (each needs an id); returns what happened to each."""
        summary = Summary()
        entries = []
        for item in items:
            if item.id is None:
                raise ValueError("items added to an index need ids")
            fp = _item_fingerprint(item)
            entries.append(_DirectEntry(str(item.id), fp, item))
        self._run(entries, summary, batch_size=batch_size, commit_every=10**9)
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

    def index_corpus(self, source, *, image_root=None, commit_every: int = 256,
                     commit_seconds: float = 30.0, batch_size: int | None = None, prune: bool = False,
                     progress: Callable[[int], None] | None = None,
                     errors_file: str | os.PathLike | None = None) -> Summary:
        """Index a folder / items JSONL / M-BEIR pool; resumable: unchanged items are skipped.

        Work is committed every ``commit_every`` items or ``commit_seconds``; a run killed at any
        point and started again does only what is left. With ``prune`` ids under this source that
        are no longer in it are deleted.
        """
        from ..data.corpus import read_corpus

        started = time.monotonic()
        summary = Summary()
        errors_path = Path(errors_file) if errors_file else self.folder / ERRORS_FILE
        errors_path.parent.mkdir(parents=True, exist_ok=True)
        skipped_path = self.folder / SKIPPED_FILE
        skip_cache = _read_skip_cache(skipped_path)
        with open(errors_path, "w", encoding="utf-8") as err_handle, \
                open(skipped_path, "a", encoding="utf-8") as skip_handle:
            seen = self._run(read_corpus(source, image_root=image_root), summary, batch_size=batch_size,
                             commit_every=commit_every, commit_seconds=commit_seconds,
                             progress=progress, err_handle=err_handle, source=str(Path(source).resolve()),
                             skip_cache=skip_cache, skip_handle=skip_handle)
        # keep only this run's entries (other sources' entries stay too)
        current = {e["id"] for e in summary.skipped}
        keep = [{"id": i, "fingerprint": fp, "reason": why} for i, (fp, why) in skip_cache.items()
                if i in current or i not in seen]
        tmp = skipped_path.with_name(SKIPPED_FILE + ".tmp")
        tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in keep), encoding="utf-8")
        os.replace(tmp, skipped_path)
        if prune:
            source_key = str(Path(source).resolve())
            stale = [r["id"] for r in self.store.records()
                     if r.get("source") == source_key and r["id"] not in seen]
            summary.deleted += self.store.delete(stale)
        self._update_graph()
        summary.seconds = time.monotonic() - started
        return summary

    def _run(self, entries, summary: Summary, *, batch_size=None, commit_every=256,
             commit_seconds=30.0, progress=None, err_handle=None, source=None,
             skip_cache: dict | None = None, skip_handle=None) -> set[str]:
        model = self.model
        known = self.store.hashes()
        seen: set[str] = set()  # every id the source holds (kept by --prune)
        # ids whose item loaded (to be embedded) or is unchanged: a later duplicate is skipped;
        # an entry that failed to load does not take its id, so a good duplicate after it is used
        taken: dict[str, str | None] = {}
        # ids whose line failed while an older version is stored: that version is dropped at the
        # end, unless a duplicate of the id was indexed (or found unchanged) in the meantime
        failed_updates: list[str] = []
        skip_cache = {} if skip_cache is None else skip_cache
        pending_deletes: list[str] = []
        pending_records: list[dict] = []
        pending_vectors: list[np.ndarray] = []
        last_commit = time.monotonic()
        chunk_size = max(1, min(commit_every, (batch_size or getattr(model, "batch_size", 32)) * 2))

        def report(kind: str, item_id, reason: str, path=None, line=None) -> None:
            entry = {"id": item_id, "path": path, "line": line, "kind": kind, "error": reason}
            (summary.errors if kind == "error" else summary.skipped).append(entry)
            if err_handle is not None:
                err_handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
                err_handle.flush()

        def flush() -> None:
            nonlocal pending_records, pending_vectors, pending_deletes, last_commit
            if pending_records or pending_deletes:
                vectors = np.concatenate(pending_vectors) if pending_vectors else \
                    np.zeros((0, self.store.dim), np.float32)
                self.store.commit(pending_records, vectors, delete_ids=pending_deletes)
                summary.deleted += len(pending_deletes)
            pending_records, pending_vectors, pending_deletes = [], [], []
            last_commit = time.monotonic()

        chunk: list[tuple[Any, Item, bool]] = []

        def embed_chunk() -> None:
            nonlocal chunk
            if not chunk:
                return
            result = model.embed([item for _, item, _ in chunk], batch_size=batch_size,
                                 show_progress_bar=False, on_error="skip")
            for err in result.errors:
                entry, item, is_update = chunk[err.index]
                report("error", entry.id, err.reason, entry.path)
                if is_update:  # the file changed and can no longer be embedded: drop its old version
                    pending_deletes.append(entry.id)
            if len(result.indices):
                records = []
                for j in result.indices:
                    entry, item, is_update = chunk[j]
                    records.append(_record(entry, item, source))
                    if is_update:
                        summary.updated += 1
                    else:
                        summary.added += 1
                pending_records.extend(records)
                pending_vectors.append(result.vectors)
            if progress:
                progress(len(chunk))
            chunk = []
            if len(pending_records) >= commit_every or time.monotonic() - last_commit >= commit_seconds:
                flush()

        for entry in entries:
            if isinstance(entry, ItemError):
                report("error", entry.item_id, entry.reason, line=entry.line)
                if progress:
                    progress(1)
                continue
            seen.add(entry.id)
            if entry.id in taken:
                first = taken[entry.id]
                report("error", entry.id, "duplicate id in the corpus: an earlier entry with this id"
                                          + (f" ({first})" if first and first != entry.path else "")
                                          + " is used, this one was skipped", entry.path)
                if progress:
                    progress(1)
                continue
            refused = self.store.check_id(entry.id)
            if refused is not None:
                report("error", entry.id[:80] + ("..." if len(entry.id) > 80 else ""), refused, entry.path)
                if progress:
                    progress(1)
                continue
            old = known.get(entry.id)
            if old is not None and old == entry.fingerprint:
                taken[entry.id] = entry.path
                summary.unchanged += 1
                if progress:
                    progress(1)
                continue
            cached = skip_cache.get(entry.id)
            if cached is not None and cached[0] == entry.fingerprint and old is None:
                report("no representation", entry.id, cached[1], entry.path)
                if progress:
                    progress(1)
                continue
            try:
                item = entry.load()
                item.metadata = {**item.metadata, **entry.meta, "kind": entry.kind}
                item = self.represent(item)
            except ItemError as exc:
                report("error", entry.id, exc.reason, entry.path)
                if old is not None:  # the file changed and is now bad: drop its old version
                    failed_updates.append(entry.id)
                if progress:
                    progress(1)
                continue
            except Unrepresentable as exc:
                report("no representation", entry.id, exc.reason, entry.path)
                skip_cache[entry.id] = (entry.fingerprint, exc.reason)
                if skip_handle is not None:
                    skip_handle.write(json.dumps({"id": entry.id, "fingerprint": entry.fingerprint,
                                                  "reason": exc.reason}, ensure_ascii=False) + "\n")
                    skip_handle.flush()
                if old is not None:
                    failed_updates.append(entry.id)
                if progress:
                    progress(1)
                continue
            taken[entry.id] = entry.path
            chunk.append((entry, item, old is not None))
            if len(chunk) >= chunk_size:
                embed_chunk()
        embed_chunk()
        pending_deletes.extend(dict.fromkeys(i for i in failed_updates if i not in taken))
        flush()
        return seen


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


@dataclass
class _DirectEntry:
    id: str
    fingerprint: str
    item: Item
    path: str | None = None
    kind: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.path = self.item.image if isinstance(self.item.image, str) else None
        self.kind = self.item.modality.value
        self.meta = dict(self.item.metadata)

    def load(self) -> Item:
        item = self.item
        return Item(text=item.text, image=item.image, id=self.id, metadata=dict(item.metadata))


def _item_fingerprint(item: Item) -> str:
    import hashlib

    image = item.image
    if isinstance(image, (bytes, bytearray)):
        image = hashlib.blake2b(image, digest_size=16).hexdigest()
    elif image is not None and not isinstance(image, (str, Path)):
        image = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    payload = json.dumps([item.text, str(image) if image is not None else None, item.metadata],
                         sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def _record(entry, item: Item, source: str | None) -> dict[str, Any]:
    meta = {k: v for k, v in item.metadata.items() if k not in ("via", "kind")}
    modality = _source_modality(entry, item)
    text = item.text[:SNIPPET_CHARS] if item.text else None
    record = {"id": entry.id, "hash": entry.fingerprint, "modality": modality, "path": entry.path,
              "text": text, "via": item.metadata.get("via"), "meta": _jsonable(meta)}
    if source is not None:
        record["source"] = source
    return record


def _source_modality(entry, item: Item) -> str:
    """The modality of the item as it is in the corpus (a photo stays "image" under a text model)."""
    kind = getattr(entry, "kind", "") or ""
    if kind in ("image",):
        return Modality.IMAGE.value
    if kind in ("image+caption", "pdf page"):
        via = item.metadata.get("via", "")
        has_text = "caption" in via or "text" in via or (item.image is not None and bool(item.text))
        return Modality.FUSED.value if has_text else Modality.IMAGE.value
    if kind in ("text",):
        return Modality.TEXT.value
    if kind in {m.value for m in Modality}:
        return kind
    return item.modality.value


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))


def _result(rank: int, hit: Hit) -> Result:
    r = hit.record
    return Result(rank=rank, score=hit.score, id=r["id"], modality=r.get("modality") or "",
                  path=r.get("path"), text=r.get("text"), via=r.get("via"), meta=r.get("meta") or {})
