"""ViDoRe visual-document retrieval tasks (text queries, page-image corpus), as users download them.

Three layouts are read, each one task folder (``--data`` may also hold several):

* **Hugging Face BEIR subsets** (ViDoRe V2 ``vidore/*_v2``, the V1 ``*_beir`` copies that mteb
  reads, ViDoRe V3 ``vidore/vidore_v3_*``, mteb's ``*_mteb_format``): three folders of parquet
  files as ``huggingface-cli download --repo-type dataset`` leaves them, ``corpus/``,
  ``queries/`` and ``qrels/`` (or ``default/``: mteb's qrels config), each file named
  ``<split>-00000-of-0000N.parquet``. Corpus rows hold an id (``corpus-id``; V3 ``corpus_id``;
  mteb ``id`` or ``_id``) and ``image`` as the ``datasets`` Image feature stores it, a struct
  ``{"bytes", "path"}``; query rows an id (``query-id`` / ``query_id`` / ``id`` / ``_id``) and
  their text (``query``, or ``text``); qrels rows ``query-id``, ``corpus-id`` (or with
  underscores) and ``score`` — the columns vidore-benchmark's ``ViDoReEvaluatorBEIR`` and mteb's
  ViDoRe tasks read. Other columns (``language``, ``markdown``, ...) are ignored: every query is
  scored against the whole corpus, as vidore-benchmark does (mteb splits V2/V3 by language).
* **ViDoRe V1 question-answering tables** (``vidore/docvqa_test_subsampled`` and the other V1
  sets): parquet rows ``query``, ``image``, ``image_filename``, one per page, as
  vidore-benchmark's ``ViDoReEvaluatorQA`` reads them: queries are the distinct non-empty
  ``query`` values (ids ``q0``, ``q1``, ... in order of first appearance), the corpus is one
  page per distinct ``image_filename`` (its id), and a query's one relevant page is the
  ``image_filename`` of the last row holding it.
* **BEIR JSONL folders** whose corpus rows carry a page ``image`` path (:mod:`umr.data.beir`).

Query and corpus ids are separate namespaces (ViDoRe numbers both from 0; mteb prefixes them
``query-test-`` / ``corpus-test-``), so a page whose id equals a query's is never dropped from that
query's results (BEIR's ``ignore_identical_ids`` is off; ``task.json`` may turn it on).

The headline metric is ViDoRe's: nDCG@5 (V1 and V2 report it), or nDCG@10 for ViDoRe V3 — a
folder whose corpus uses V3's ``corpus_id`` column or whose name contains ``v3``. A
``task.json`` in the folder (``main_metric``, ``name``, ...) overrides, as for BEIR folders.
Bad rows become failed items with their id and why (image bytes that are not an image, a
missing id or text); the rest is read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..core.images import image_size
from ..core.items import Item, ItemError, Modality
from .beir import is_beir_task, load_beir_task, load_task_folders
from .tasks import RetrievalTask, parse_category

#: id columns, by subset, in the spellings ViDoRe V1/V2 (``corpus-id``), V3 (``corpus_id``) and mteb use
CORPUS_IDS = ("corpus-id", "corpus_id", "id", "_id")
QUERY_IDS = ("query-id", "query_id", "id", "_id")
QUERY_TEXTS = ("query", "text")
#: the folders of qrels: ViDoRe's ``qrels`` config, or mteb's ``default`` one
QRELS_FOLDERS = ("qrels", "default")
VISUAL_DOCUMENT = "T→VD"


def is_vidore_beir(folder: str | Path) -> bool:
    """Whether ``folder`` holds ViDoRe's Hugging Face BEIR subsets (``corpus/``, ``queries/`` parquet)."""
    folder = Path(folder)
    return all(any((folder / sub).glob("*.parquet")) for sub in ("corpus", "queries"))


def is_vidore_qa(folder: str | Path) -> bool:
    """Whether ``folder`` holds a ViDoRe V1 question-answering table (parquet with ``query``,
    ``image`` and ``image_filename``)."""
    files = _qa_files(Path(folder), None)
    if not files:
        return False
    names = set(_parquet().read_schema(files[0]).names)
    return {"query", "image", "image_filename"} <= names


def is_vidore_task(folder: str | Path) -> bool:
    return is_vidore_beir(folder) or is_vidore_qa(folder) or is_beir_task(folder)


def headline_of(folder: Path, *, v3_columns: bool = False) -> str:
    """ViDoRe's headline metric for a task folder: nDCG@10 for V3, nDCG@5 otherwise."""
    return "ndcg@10" if v3_columns or re.search(r"v3", folder.name, re.IGNORECASE) else "ndcg@5"


def load_vidore_task(folder: str | Path, *, split: str = "test", name: str | None = None) -> RetrievalTask:
    """One ViDoRe task folder in any of the layouts the module doc lists."""
    folder = Path(folder)
    meta = _task_meta(folder)
    if is_vidore_beir(folder):
        queries, candidates, qrels, v3 = _read_beir(folder, split)
        layout = "vidore-beir"
    elif is_vidore_qa(folder):
        queries, candidates, qrels = _read_qa(folder, split)
        v3, layout = False, "vidore-qa"
    elif is_beir_task(folder):
        task = load_beir_task(folder, split=split, name=name,
                              ignore_identical_ids=bool(meta.get("ignore_identical_ids", False)))
        if "main_metric" not in meta:
            task.main_metric = headline_of(folder)
        if "category" not in meta:
            task.category = VISUAL_DOCUMENT
        task.metadata["layout"] = "beir-jsonl"
        return task
    else:
        raise FileNotFoundError(f"{folder}: not a ViDoRe task (corpus/ + queries/ + qrels/ parquet folders, "
                                f"a V1 parquet table with query, image and image_filename, or a BEIR folder)")
    return RetrievalTask(
        name=name or meta.get("name") or folder.name, queries=queries, candidates=candidates, qrels=qrels,
        category=parse_category(meta.get("category", VISUAL_DOCUMENT)), target_modality=Modality.IMAGE,
        dataset=meta.get("dataset", folder.name), pool="corpus", hit_k=int(meta.get("hit_k", 5)),
        main_metric=meta.get("main_metric", headline_of(folder, v3_columns=v3)), run_tag="0", average="run",
        ignore_identical_ids=bool(meta.get("ignore_identical_ids", False)),
        metadata={"folder": str(folder), "split": split, "layout": layout},
    )


def load_vidore(root: str | Path, *, tasks: Iterable[str] | None = None, split: str = "test") -> list[RetrievalTask]:
    """A ViDoRe task folder, or every task folder directly under ``root`` (optionally only ``tasks``)."""
    return load_task_folders(root, is_task=is_vidore_task, load=lambda folder: load_vidore_task(folder, split=split),
                             tasks=tasks, kind="ViDoRe task folders (corpus/, queries/, qrels/ parquet; a V1 "
                                               "parquet table; or a BEIR folder)")


# -- reading ---------------------------------------------------------------------------------------


def _parquet():
    """pyarrow's parquet reader (the ``eval`` extra), or a one-line ImportError saying how to get it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading ViDoRe's parquet files needs pyarrow: pip install 'umr[eval]'") from None
    return pq


def _task_meta(folder: Path) -> dict[str, Any]:
    path = folder / "task.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _split_files(folder: Path, split: str) -> list[Path]:
    """A subset folder's parquet files of ``split`` (``test-00000-of-00001.parquet``, ``test.parquet``);
    all of them when none is named after a split (one split only)."""
    files = sorted(folder.glob("*.parquet"))
    named = [f for f in files if f.name == f"{split}.parquet" or f.name.startswith(f"{split}-")]
    if named:
        return named
    if files and all(re.match(r"^\w+-\d+-of-\d+\.parquet$", f.name) for f in files):
        return []  # shards of other splits only
    return files


def _rows(files: list[Path], columns: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of parquet files, only ``columns`` (those present), a batch at a time."""
    pq = _parquet()

    for path in files:
        handle = pq.ParquetFile(path)
        present = [c for c in columns if c in handle.schema_arrow.names]
        for batch in handle.iter_batches(columns=present, batch_size=64):
            yield from batch.to_pylist()


def _column(files: list[Path], choices: tuple[str, ...], what: str) -> str:
    pq = _parquet()

    names = pq.read_schema(files[0]).names
    found = next((c for c in choices if c in names), None)
    if found is None:
        raise ValueError(f"{files[0]}: no {what} column (expected one of {', '.join(choices)}; has {', '.join(names)})")
    return found


def _subset(folder: Path, names: tuple[str, ...], split: str) -> list[Path]:
    for name in names:
        files = _split_files(folder / name, split)
        if files:
            return files
    raise FileNotFoundError(f"{folder}: no {split} parquet files under {' or '.join(n + '/' for n in names)}")


def _row_id(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None or value == "" or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ItemError(None, f"has no {column!r} (its id)" if value in (None, "") else
                        f"field {column!r} (its id) must be a string or a number, got {type(value).__name__}")
    return str(value)


def _page(row: dict[str, Any], item_id: str) -> Item:
    """A corpus row's page image (``datasets``' Image struct, or bytes), checked to be an image."""
    image = row.get("image")
    data = image.get("bytes") if isinstance(image, dict) else image
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ItemError(item_id, "has no image bytes (the 'image' column holds none)")
    data = bytes(data)
    image_size(data, item_id=item_id)  # header check: bytes that are no image fail here, by id
    return Item.candidate(image=data, id=item_id)


def _read_corpus(files: list[Path], id_column: str) -> list[Item]:
    candidates = []
    for number, row in enumerate(_rows(files, [id_column, "image"]), 1):
        cid = None
        try:
            cid = _row_id(row, id_column)
            candidates.append(_page(row, cid))
        except ItemError as exc:
            candidates.append(Item.failed(cid or f"corpus:{number}", exc.reason))
    return candidates


def _read_beir(folder: Path, split: str) -> tuple[list[Item], list[Item], dict[str, dict[str, int]], bool]:
    corpus_files = _subset(folder, ("corpus",), split)
    query_files = _subset(folder, ("queries",), split)
    qrels_files = _subset(folder, QRELS_FOLDERS, split)
    corpus_id = _column(corpus_files, CORPUS_IDS, "corpus id")
    query_id, query_text = _column(query_files, QUERY_IDS, "query id"), _column(query_files, QUERY_TEXTS, "query text")
    qrel_qid = _column(qrels_files, ("query-id", "query_id"), "qrels query id")
    qrel_did = _column(qrels_files, ("corpus-id", "corpus_id"), "qrels corpus id")

    qrels: dict[str, dict[str, int]] = {}
    for number, row in enumerate(_rows(qrels_files, [qrel_qid, qrel_did, "score"]), 1):
        if row.get(qrel_qid) is None or row.get(qrel_did) is None or row.get("score") is None:
            raise ValueError(f"{qrels_files[0].parent}: qrels row {number} lacks {qrel_qid}, {qrel_did} or score")
        qrels.setdefault(str(row[qrel_qid]), {})[str(row[qrel_did])] = int(row["score"])

    queries = []
    for number, row in enumerate(_rows(query_files, [query_id, query_text]), 1):
        qid = None
        try:
            qid = _row_id(row, query_id)
            text = row.get(query_text)
            if not isinstance(text, str) or not text.strip():
                raise ItemError(qid, f"has no text (column {query_text!r})")
        except ItemError as exc:
            queries.append(Item.failed(qid or f"queries:{number}", exc.reason, is_query=True))
            continue
        if qid in qrels:  # as BEIR and mteb: the split's judged queries
            queries.append(Item.query(text=text, id=qid))
    return queries, _read_corpus(corpus_files, corpus_id), qrels, corpus_id == "corpus_id"


def _qa_files(folder: Path, split: str | None) -> list[Path]:
    for where in (folder, folder / "data"):
        if any(where.glob("*.parquet")):
            return _split_files(where, split) if split else sorted(where.glob("*.parquet"))
    return []


def _read_qa(folder: Path, split: str) -> tuple[list[Item], list[Item], dict[str, dict[str, int]]]:
    files = _qa_files(folder, split)
    if not files:
        raise FileNotFoundError(f"{folder}: no {split} parquet files")
    query_ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    candidates: dict[str, Item] = {}
    for number, row in enumerate(_rows(files, ["query", "image", "image_filename"]), 1):
        filename = row.get("image_filename")
        if not isinstance(filename, str) or not filename:
            candidates[f"row:{number}"] = Item.failed(f"row:{number}", "has no 'image_filename' (its id)")
            continue
        if filename not in candidates:
            try:
                candidates[filename] = _page(row, filename)
            except ItemError as exc:
                candidates[filename] = Item.failed(filename, exc.reason)
        query = row.get("query")
        if isinstance(query, str) and query:
            qid = query_ids.setdefault(query, f"q{len(query_ids)}")
            qrels[qid] = {filename: 1}  # the last row holding the query, as vidore-benchmark
    queries = [Item.query(text=text, id=qid) for text, qid in query_ids.items()]
    return queries, list(candidates.values()), qrels
