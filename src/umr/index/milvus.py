"""The Milvus backend: the same store interface as :class:`~umr.index.store.FlatStore`.

``uri`` is a local file (``./vectors.db``: Milvus Lite, embedded, one process at a time) or a
server / cluster address (``http://host:19530``). The index folder keeps a small manifest naming
the URI, the collection and the model; the collection's own description repeats the model so a
second index folder pointed at the same collection cannot mix models.

Writes are upserts by id, so a run killed half-way and started again leaves every item exactly
once. Milvus makes its own durability guarantees: Lite flushes its local file after each commit;
on a server a write is durable in its log once the upsert returns, so it is not flushed (a flush
seals segments and costs seconds there).

On a server, a collection is created with what Lite lacks: an HNSW index with the configured
``M`` / ``efConstruction`` (``method="hnsw"``) and Strong consistency, so a search right after a
commit sees it (read-your-writes). ``modality`` is not a partition key: on Milvus 2.3.5 rows
upserted into a partition-key collection are missed by searches filtered on that key.

Every call to Milvus goes through :func:`_guarded`: a server that cannot be reached, or stops
answering mid-run, is one :class:`~umr.index.base.StoreUnreachable` naming the URI and saying to
run the same command again once it is back (upserts already returned are kept), never
pymilvus's exception, and pymilvus's own logging of each failed call (a traceback on stderr) is
silenced.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..core.items import Modality
from .base import (FORMAT, MANIFEST, Filter, Hit, IndexStoreError, StoreUnreachable, VectorStore,
                   check_search_args, has_surrogates, key_value, read_manifest, replace_surrogates,
                   write_manifest)

#: the primary key is a VARCHAR of at most this many characters
_MAX_ID = 1024
_MAX_TEXT = 4096
_QUERY_PAGE = 10_000
#: Milvus returns at most this many hits per query
_MAX_LIMIT = 16384
#: starts the stored form of an id holding lone surrogates (a noncharacter, reserved for this)
_ID_MARK = "\U0010fffe"
#: the info key under which a record whose text holds lone surrogates is kept, as ASCII JSON
_ESCAPED = "umr:escaped"
#: every read of a server sees every commit before it
_CONSISTENCY = "Strong"


def _is_local(uri: str) -> bool:
    return not re.match(r"^[a-z]+://", uri)


def resolve_uri(uri: str, folder: Path) -> str:
    """Local Lite files are stored absolute so the index opens from any working folder."""
    if _is_local(uri):
        return str(Path(uri).expanduser().resolve())
    return uri


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _literal(value: Any) -> str:
    """``value`` as a Milvus expression literal.

    Milvus strings take the C escapes (``\\"``, ``\\\\``, ``\\n``...) but not ``\\uXXXX``, so
    text is written as itself (``ensure_ascii=False``) with only quotes, backslashes and line
    breaks escaped; lone surrogates (which Milvus cannot hold) become U+FFFD, as in stored
    metadata.
    """
    if isinstance(value, dict):
        raise ValueError("the milvus backend cannot filter on a JSON object value; "
                         "filter on a string, number, boolean, null or a list of them")
    if isinstance(value, str):
        return '"' + "".join(_ESCAPES.get(c, c) for c in replace_surrogates(value)) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def filter_expression(filter: Filter | None, *, null_test: bool = True) -> str:
    """A Milvus boolean expression that every record :meth:`Filter.accepts` passes.

    Milvus compares ``true`` equal to ``1``; the store drops such extra hits by applying the
    filter's own rule to what Milvus returns. Servers before 2.5 have no ``is null``
    (``null_test=False``): a field whose accepted values include null is then left to that rule.
    """
    if filter is None:
        return ""
    parts = []
    if filter.modalities is not None:
        parts.append(f"modality in {_literal(list(filter.modalities))}")
    for key, accepted in filter.where:
        if not null_test and ("null",) in accepted:
            continue
        field = f"meta[{_literal(key)}]"
        options = []
        for value in map(key_value, accepted):
            if value is None:
                options.append(f"{field} is null")  # null or missing
            elif isinstance(value, (dict, list)):
                raise ValueError("the milvus backend cannot filter on a JSON object or list value; "
                                 "filter on a string, number, boolean, null or a list of them (any of)")
            else:  # the value itself, or a list holding it
                options += [f"{field} == {_literal(value)}", f"json_contains({field}, {_literal(value)})"]
        parts.append("(" + " or ".join(options) + ")" if options else "false")
    return " and ".join(parts)


def _pk(item_id: str) -> str:
    """The primary key of an id: itself, or (lone surrogates, which Milvus cannot hold) the
    mark followed by its ASCII JSON escape, read back exactly by :func:`_id`."""
    return _ID_MARK + json.dumps(item_id)[1:-1] if has_surrogates(item_id) else item_id


def _id(pk: str) -> str:
    return json.loads('"' + pk[len(_ID_MARK):] + '"') if pk.startswith(_ID_MARK) else pk


def _ids_expression(pks: Sequence[str]) -> str:
    return f"id in {_literal(list(pks))}"


class MilvusStore(VectorStore):
    backend = "milvus"

    def __init__(self, folder: Path, manifest: dict[str, Any], client, *, writable: bool):
        self.folder = Path(folder)
        self.manifest = manifest
        self.client = client
        self.collection = manifest["collection"]
        self.writable = writable
        self.server = not _is_local(manifest["uri"])
        self._null_test = _has_null_test(client, manifest["uri"]) if self.server else True
        #: read options: a server reads at Strong consistency (Lite has one process, no lag)
        self._read = {"consistency_level": _CONSISTENCY} if self.server else {}

    def _call(self, method: Callable, *args, **kwargs):
        """``method(*args, **kwargs)`` of the client, guarded (see :func:`_guarded`)."""
        return _guarded(self.manifest["uri"], method, *args, **kwargs)

    @classmethod
    def create(cls, folder: str | Path, *, dim: int, config: dict[str, Any], uri: str,
               collection: str = "umr") -> "MilvusStore":
        if config.get("quantize"):
            raise ValueError(f"--quantize {config['quantize']} is for the faiss backend: a Milvus collection "
                             f"keeps float32 vectors (umr does not create Milvus's quantised index types)")
        from pymilvus import DataType, MilvusClient

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / MANIFEST).exists():
            raise IndexStoreError(f"{folder} already holds an index")
        uri = resolve_uri(uri, folder)
        client = _connect(uri)
        description = json.dumps({"umr": FORMAT, "dim": int(dim), "model": config.get("model")})
        if _guarded(uri, client.has_collection, collection):
            existing = _collection_model(client, collection)
            if existing is not None and existing.get("model", {}).get("name") != config.get("model", {}).get("name"):
                raise IndexStoreError(
                    f"Milvus collection {collection!r} at {uri} holds vectors of model "
                    f"{existing.get('model', {}).get('name')!r}; pick another --collection")
            _load(client, collection, uri)
        else:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                description=description)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_MAX_ID)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
            server = not _is_local(uri)
            schema.add_field("modality", DataType.VARCHAR, max_length=16)
            schema.add_field("hash", DataType.VARCHAR, max_length=128)
            schema.add_field("meta", DataType.JSON)
            schema.add_field("info", DataType.JSON)
            params = client.prepare_index_params()
            # Milvus Lite is for small collections and answers exactly; HNSW is for servers
            if config.get("method") == "hnsw" and server:
                params.add_index("vector", index_type="HNSW", metric_type="IP",
                                 params={"M": int(config.get("hnsw_m", 32)),
                                         "efConstruction": int(config.get("ef_construction", 100))})
            else:
                params.add_index("vector", index_type="FLAT", metric_type="IP")
            extra = {"consistency_level": _CONSISTENCY} if server else {}
            _guarded(uri, client.create_collection, collection, schema=schema, index_params=params,
                     description=description, **extra)
        manifest = {"format": FORMAT, "backend": "milvus", "uri": uri, "collection": collection,
                    "dim": int(dim), "config": config}
        write_manifest(folder, manifest)
        return cls(folder, manifest, client, writable=True)

    @classmethod
    def open(cls, folder: str | Path, *, writable: bool = False,
             manifest: dict[str, Any] | None = None) -> "MilvusStore":
        folder = Path(folder)
        manifest = manifest or read_manifest(folder)
        client = _connect(manifest["uri"])
        if not _guarded(manifest["uri"], client.has_collection, manifest["collection"]):
            raise IndexStoreError(f"{folder}: Milvus collection {manifest['collection']!r} is missing at "
                              f"{manifest['uri']}")
        _load(client, manifest["collection"], manifest["uri"])
        return cls(folder, manifest, client, writable=writable)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing must not mask the real outcome
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # reading ---------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        rows = self._call(self.client.query, self.collection, filter="", output_fields=["count(*)"], **self._read)
        return int(rows[0]["count(*)"])

    def _scan(self, fields: list[str], expr: str = "") -> Iterable[dict[str, Any]]:
        """Every row, a page at a time in primary-key order (as pymilvus's query iterator pages,
        but with the key written as a literal that survives quotes and backslashes in ids)."""
        last = None
        while True:
            page_expr = [f"({expr})"] if expr else []
            if last is not None:
                page_expr.append(f"id > {_literal(last)}")
            page = self._call(self.client.query, self.collection, filter=" and ".join(page_expr),
                              limit=_QUERY_PAGE, output_fields=sorted({"id", *fields}), iterator="True",
                              reduce_stop_for_best="True", **self._read)
            if not page:
                return
            yield from page
            last = page[-1]["id"]

    def ids(self) -> list[str]:
        return [_id(row["id"]) for row in self._scan(["id"])]

    def hashes(self) -> dict[str, str]:
        """id -> content fingerprint of every stored item.

        Milvus Lite can keep two rows with one primary key when killed in the middle of an upsert;
        a writer deletes such ids here (all their copies), so the caller embeds them once again.
        """
        found: dict[str, str] = {}
        twice: set[str] = set()
        for row in self._scan(["id", "hash"]):
            if row["id"] in found:
                twice.add(row["id"])
            found[row["id"]] = row["hash"]
        if twice and self.writable:
            self._delete_pks(sorted(twice))
            if not self.server:
                self._call(self.client.flush, self.collection)
            for pk in twice:
                found.pop(pk, None)
        return {_id(pk): h for pk, h in found.items()}

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        ids = list(ids)
        found: dict[str, dict] = {}
        for start in range(0, len(ids), 1000):
            pks = [_pk(i) for i in ids[start:start + 1000]]
            rows = self._call(self.client.query, self.collection, filter=_ids_expression(pks),
                              output_fields=["id", "modality", "hash", "meta", "info"], **self._read)
            for row in rows:
                record = _record(row)
                found[record["id"]] = record
        return [found.get(i) for i in ids]

    def records(self) -> Iterable[dict[str, Any]]:
        for row in self._scan(["id", "modality", "hash", "meta", "info"]):
            yield _record(row)

    def metadata_fields(self) -> set[str]:
        fields: set[str] = set()
        for row in self._scan(["id", "meta", "info"]):
            fields.update(_record(row)["meta"].keys())
        return fields

    def modality_counts(self) -> dict[str, int]:
        """One ``count(*)`` query per modality (Milvus keeps the counts; nothing is scanned)."""
        counts = {}
        for modality in Modality:
            rows = self._call(self.client.query, self.collection,
                              filter=f"modality == {_literal(modality.value)}", output_fields=["count(*)"],
                              **self._read)
            if int(rows[0]["count(*)"]):
                counts[modality.value] = int(rows[0]["count(*)"])
        return counts

    def check_id(self, item_id: str) -> str | None:
        if item_id.startswith(_ID_MARK):
            return "ids starting with U+10FFFE are reserved by the milvus backend"
        if len(_pk(item_id)) > _MAX_ID:
            return f"id longer than {_MAX_ID} characters (the milvus limit)"
        return None

    def search(self, queries: np.ndarray, k: int, *, filter: Filter | None = None,
               method: str | None = None, ef_search: int | None = None,
               rescore_k: int | None = None) -> list[list[Hit]]:
        """Top-``k`` records per query; a filter is applied by Milvus and then by its own rule
        (:meth:`Filter.accepts`), asking Milvus for more hits when that rule dropped some."""
        check_search_args(k, ef_search)
        if rescore_k is not None:
            raise ValueError("rescore_k is for a quantised faiss index; a Milvus index keeps float32 vectors")
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(int(k), _MAX_LIMIT)
        params: dict[str, Any] = {"metric_type": "IP"}
        if (method or self.config.get("method")) == "hnsw" and self.server:
            params["params"] = {"ef": max(int(ef_search or self.config.get("ef_search", 128)), k)}
        expression = filter_expression(filter, null_test=self._null_test)
        limit = k
        while True:
            found = self._search(queries, limit, expression, params)
            if filter is None:
                return found
            kept = [[hit for hit in row if filter.accepts(hit.record)] for row in found]
            short = any(len(mine) < k and len(row) == limit for mine, row in zip(kept, found))
            if not short or limit >= _MAX_LIMIT:
                return [row[:k] for row in kept]
            limit = min(4 * limit, _MAX_LIMIT)

    def _search(self, queries: np.ndarray, limit: int, expression: str, params: dict) -> list[list[Hit]]:
        try:
            results = self._call(self.client.search, self.collection, data=[q.tolist() for q in queries],
                                 limit=limit, filter=expression, output_fields=["modality", "hash", "meta", "info"],
                                 search_params=params, **self._read)
        except StoreUnreachable:
            raise
        except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException (and others)
            if not expression or type(exc).__name__ != "MilvusException":
                raise
            reason = getattr(exc, "message", None) or str(exc)
            reason = " ".join(str(reason).split())
            raise IndexStoreError(f"Milvus rejected the filter {expression}: {reason}") from None
        out = []
        for hits in results:
            row_hits = []
            for hit in hits:
                entity = dict(hit.get("entity", {}))
                entity["id"] = hit["id"]
                row_hits.append(Hit(float(hit["distance"]), _record(entity)))
            out.append(row_hits)
        return out

    # writing ---------------------------------------------------------------------------------

    def commit(self, records: Sequence[dict[str, Any]], vectors: np.ndarray,
               delete_ids: Iterable[str] = ()) -> None:
        self._require_writable()
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        for record in records:
            refused = self.check_id(str(record["id"]))
            if refused is not None:
                raise ValueError(f"item {str(record['id'])[:80]!r}: {refused}")
        rows = [_row(record, vector) for record, vector in zip(records, vectors)]
        for start in range(0, len(rows), 500):
            self._call(self.client.upsert, self.collection, rows[start:start + 500])
        keep = {r["id"] for r in rows}
        delete_pks = [pk for pk in map(_pk, delete_ids) if pk not in keep]
        if delete_pks:
            self._delete_pks(delete_pks)
        if (rows or delete_pks) and not self.server:
            self._call(self.client.flush, self.collection)

    def _delete_pks(self, pks: Sequence[str]) -> None:
        # by expression: pymilvus's delete(ids=...) does not escape quotes or backslashes in ids
        for start in range(0, len(pks), 1000):
            self._call(self.client.delete, self.collection, filter=_ids_expression(pks[start:start + 1000]))

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        present = [r["id"] for r in self.get(ids) if r is not None]
        if present:
            self.commit([], np.zeros((0, self.dim), np.float32), delete_ids=present)
        return len(present)

    def set_config(self, config: dict[str, Any]) -> None:
        self._require_writable()
        self.manifest["config"] = config
        write_manifest(self.folder, self.manifest)

    def update_graph(self, *, m: int = 32, ef_construction: int = 100) -> None:
        """Milvus maintains its own vector index."""

    def compact(self) -> None:
        try:
            self._call(self.client.compact, self.collection)
        except StoreUnreachable:
            raise
        except Exception:  # noqa: BLE001 - Lite may not compact on demand
            pass

    def _require_writable(self) -> None:
        if not self.writable:
            raise IndexStoreError(f"{self.folder} was opened read-only")


def _row(record: dict[str, Any], vector: np.ndarray) -> dict[str, Any]:
    """A record as a Milvus row. Text holding lone surrogates (file names that are not UTF-8)
    cannot go to Milvus as is: the record is kept exactly as ASCII JSON in ``info``, and ``meta``
    (which filters read) gets U+FFFD in their place."""
    info = {k: v for k, v in record.items() if k not in ("id", "modality", "hash", "meta")}
    if isinstance(info.get("text"), str):
        info["text"] = info["text"][:_MAX_TEXT]
    meta = record.get("meta") or {}
    exact = json.dumps({"info": info, "meta": meta}, ensure_ascii=False)
    if has_surrogates(exact):
        info = {_ESCAPED: json.dumps({"info": info, "meta": meta})}
        meta = json.loads(replace_surrogates(json.dumps(meta, ensure_ascii=False)))
    return {"id": _pk(str(record["id"])), "vector": vector.tolist(),
            "modality": record.get("modality") or "", "hash": record.get("hash") or "",
            "meta": meta, "info": info}


def _record(row: dict[str, Any]) -> dict[str, Any]:
    info, meta = row.get("info") or {}, row.get("meta") or {}
    if _ESCAPED in info:
        exact = json.loads(info[_ESCAPED])
        info, meta = exact["info"], exact["meta"]
    record = {"id": _id(row["id"]), "hash": row.get("hash"), "modality": row.get("modality")}
    record.update(info)
    record["meta"] = meta
    return record


def _collection_model(client, collection: str) -> dict[str, Any] | None:
    try:
        description = client.describe_collection(collection).get("description") or ""
        return json.loads(description) if description.startswith("{") else None
    except Exception:  # noqa: BLE001
        return None


def _has_null_test(client, uri: str) -> bool:
    """Whether the server's expressions have ``is null`` (Milvus 2.5 and later)."""
    found = re.match(r"v?(\d+)\.(\d+)", str(_guarded(uri, client.get_server_version)))
    return found is None or (int(found[1]), int(found[2])) >= (2, 5)


def _load(client, collection: str, uri: str) -> None:
    """A collection reopened after a restart (or a crash) is released: load it for queries."""
    try:
        _guarded(uri, client.load_collection, collection)
    except StoreUnreachable:
        raise
    except Exception as exc:  # noqa: BLE001
        raise IndexStoreError(f"cannot load Milvus collection {collection!r}: {exc}") from None


#: gRPC status codes of a server that is down, restarting or not answering
_LOST_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def _lost_reason(exc: BaseException) -> str | None:
    """What says that ``exc`` (from pymilvus or gRPC) means the server cannot be reached or stopped
    answering, in one line; None for any other error (a bad filter, a missing collection...)."""
    import grpc
    from pymilvus.client.types import Status
    from pymilvus.exceptions import (ConnectError, ConnectionNotExistException, MilvusException,
                                     MilvusUnavailableException)

    def lost(code) -> bool:
        return isinstance(code, grpc.StatusCode) and code.name in _LOST_CODES

    if isinstance(exc, grpc.FutureTimeoutError):
        return "timed out connecting"
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}" if lost(exc.code()) else None
    if isinstance(exc, (ConnectError, ConnectionNotExistException, MilvusUnavailableException)):
        return exc.message
    if isinstance(exc, MilvusException) and (exc.code == Status.CONNECT_FAILED or lost(exc.code)):
        return exc.message
    return None


def _guarded(uri: str, method: Callable, *args, **kwargs):
    """``method(*args, **kwargs)`` (a pymilvus client call); a server that cannot be reached or
    stopped answering is a :class:`StoreUnreachable` naming ``uri`` (other errors pass as they are)."""
    try:
        return method(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - only lost-server errors are mapped, the rest re-raised
        reason = _lost_reason(exc)
        if reason is None:
            raise
        reason = " ".join(str(reason).split())[:300]
        raise StoreUnreachable(f"the Milvus server at {uri} stopped answering ({reason}); what was committed "
                               f"is kept: run the same command again once the server is back") from None


def _quiet_pymilvus_logs() -> None:
    """pymilvus logs every failed call with a traceback to stderr, through handlers of its own; the
    store raises each failure as one :class:`IndexStoreError` instead, so those logs are silenced."""
    for name in ("pymilvus", "pymilvus.milvus_client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _connect(uri: str):
    from pymilvus import MilvusClient

    _quiet_pymilvus_logs()
    if _is_local(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        return MilvusClient(uri, token=os.environ.get("MILVUS_TOKEN", ""))
    except Exception as exc:  # noqa: BLE001 - any connection failure is one line for the user
        if _is_local(uri):
            raise IndexStoreError(
                f"cannot open Milvus Lite file {uri}: {type(exc).__name__}. Milvus Lite lets one process "
                f"at a time use a file (is `umr index` running on it?); for concurrent indexing and "
                f"search use a Milvus server (--uri http://host:19530)") from None
        reason = " ".join(str(_lost_reason(exc) or f"{type(exc).__name__}: {exc}").split())[:300]
        raise StoreUnreachable(f"cannot connect to Milvus at {uri} ({reason}): start the server (or check "
                               f"--uri), then run the same command again") from None
