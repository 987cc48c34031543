"""BEIR-style task folders (UMRB tasks, MTEB retrieval sets) read into retrieval tasks.

A task folder holds::

    corpus.jsonl     {"_id", "title"?, "text"?, "image"?, "video"?}     one candidate per line
    queries.jsonl    {"_id", "text"?, "image"?, "video"?, "instruction"?}
    qrels/test.tsv   query-id <TAB> corpus-id <TAB> score      (a header line; graded scores)
    task.json        optional: {"name", "category": "T→VD", "instruction", "main_metric",
                                "hit_k", "target_modality", "ignore_identical_ids"}

``image`` and ``video`` (a video file, for models that see video) are paths relative to the task
folder (or absolute). As BEIR's sentence-transformers
wrapper does, a candidate's text is ``title + " " + text`` (stripped) when it has a title. A bad
record (empty title and text and no image, a field of the wrong type, no ``_id``, a line that is
not JSON) is kept as a failed item (:meth:`~umr.core.items.Item.failed`), which the evaluator counts
and names; a record without an id is named ``corpus.jsonl:LINE``. The
category (UMRB's T→T, I→I, T→I, T→VD, I→T, T→IT, IT→T, IT→I, IT→IT; and T→V, V→T, V→V) comes from ``task.json`` or
else from the modalities of the queries and of the judged candidates. The headline metric is
NDCG@10 unless ``task.json`` says otherwise.

Scored as BEIR scores: means over the queries that were run and have judgements (a qrels line
for a query absent from ``queries.jsonl`` is dropped, not a zero), and a result whose id equals
the query's id is dropped before scoring (BEIR's ``ignore_identical_ids``, on by default as in
BEIR's ``EvaluateRetrieval``; ``"ignore_identical_ids": false`` in task.json keeps them).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from ..core.items import Item, Modality
from .files import image_field, jsonl_records, read_item, record_id, string_field
from .qrels import read_qrels
from .tasks import RetrievalTask, category_of, parse_category, target_of_category


def is_beir_task(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "corpus.jsonl").is_file() and (folder / "queries.jsonl").is_file()


def candidate_text(record: dict, item_id: str | None = None) -> str | None:
    """``title + " " + text`` (stripped) as BEIR joins them, or the text alone without a title;
    an :class:`~umr.core.items.ItemError` for a title or text that is not a string."""
    title, text = string_field(record, "title", item_id) or "", string_field(record, "text", item_id) or ""
    joined = (title + " " + text).strip() if title else text
    return joined or None


def _candidate(record: dict, folder: Path) -> Item:
    did = record_id(record, "_id")
    return Item.candidate(text=candidate_text(record, did), image=image_field(record, "image", did, folder),
                          video=image_field(record, "video", did, folder), id=did)


def _query(record: dict, folder: Path, instruction: str | None) -> Item:
    qid = record_id(record, "_id")
    return Item.query(text=string_field(record, "text", qid), image=image_field(record, "image", qid, folder),
                      video=image_field(record, "video", qid, folder),
                      instruction=string_field(record, "instruction", qid) or instruction, id=qid)


def load_beir_task(folder: str | Path, *, split: str = "test", name: str | None = None,
                   instruction: str | None = None, ignore_identical_ids: bool | None = None) -> RetrievalTask:
    """One BEIR-style task folder; ``instruction`` and ``ignore_identical_ids`` override task.json's."""
    folder = Path(folder)
    if not is_beir_task(folder):
        raise FileNotFoundError(f"{folder}: not a BEIR-style task (needs corpus.jsonl and queries.jsonl)")
    meta = json.loads((folder / "task.json").read_text(encoding="utf-8")) if (folder / "task.json").is_file() else {}
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise FileNotFoundError(f"{folder}: no qrels/{split}.tsv")
    qrels, _ = read_qrels(qrels_path)

    candidates = [read_item(lambda r: _candidate(r, folder), record, where="corpus.jsonl", line=line, is_query=False)
                  for line, record in jsonl_records(folder / "corpus.jsonl")]
    instruction = instruction if instruction is not None else meta.get("instruction")
    queries = []
    wanted = set(qrels)
    for line, record in jsonl_records(folder / "queries.jsonl"):
        query = read_item(lambda r: _query(r, folder, instruction), record, where="queries.jsonl", line=line,
                          is_query=True)
        # BEIR runs the split's judged queries; a record too broken to have an id is kept (and fails)
        if query.id in wanted or query.id == f"queries.jsonl:{line}":
            queries.append(query)

    if meta.get("category"):
        category = parse_category(meta["category"])
        target = Modality.parse(meta.get("target_modality") or target_of_category(category))
    else:  # from the items that have a modality (failed ones have none)
        modalities = {c.id: str(c.modality) for c in candidates if c.problem is None}
        judged = Counter(modalities[d] for j in qrels.values() for d, r in j.items() if r > 0 and d in modalities)
        target = Modality.parse(meta.get("target_modality") or (judged.most_common(1)[0][0] if judged else "text"))
        qmods = Counter(str(q.modality) for q in queries if q.problem is None)
        category = category_of(qmods.most_common(1)[0][0] if qmods else "text", target)
    return RetrievalTask(
        name=name or meta.get("name") or folder.name, queries=queries, candidates=candidates, qrels=qrels,
        category=category, target_modality=target, dataset=meta.get("dataset", folder.name), pool="corpus",
        hit_k=int(meta.get("hit_k", 5)), main_metric=meta.get("main_metric", "ndcg@10"), run_tag="0",
        average="run", ignore_identical_ids=bool(meta.get("ignore_identical_ids", True)
                                                 if ignore_identical_ids is None else ignore_identical_ids),
        metadata={"folder": str(folder), "split": split},
    )


def load_beir(root: str | Path, *, tasks: Iterable[str] | None = None, split: str = "test") -> list[RetrievalTask]:
    """A task folder, or every task folder directly under ``root`` (optionally only ``tasks``)."""
    return load_task_folders(root, is_task=is_beir_task, load=lambda folder: load_beir_task(folder, split=split),
                             tasks=tasks, kind="BEIR-style task folders (corpus.jsonl + queries.jsonl + qrels/)")


def load_task_folders(root: str | Path, *, is_task: Callable[[Path], bool], load: Callable[[Path], RetrievalTask],
                      tasks: Iterable[str] | None, kind: str) -> list[RetrievalTask]:
    """``root`` if ``is_task`` says it is a task folder, else every task folder directly under it,
    each read by ``load``; only ``tasks`` (by name, in that order) when given."""
    root = Path(root)
    if is_task(root):
        folders = [root]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and is_task(p)) if root.is_dir() else []
        if not folders:
            raise FileNotFoundError(f"{root}: no {kind}")
    loaded = [load(f) for f in folders]
    if tasks:
        wanted = list(tasks)
        by_name = {t.name: t for t in loaded}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise KeyError(f"no task(s) {', '.join(missing)} under {root}; have: {', '.join(by_name)}")
        loaded = [by_name[n] for n in wanted]
    return loaded
