"""TREC run and qrels files: the 6-column TREC run, UniIR's 7-column variant, and qrels."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..core.atomic import atomic_writer
from ..data.qrels import read_qrels
from .metrics import trec_order

__all__ = ["check_trec_id", "read_qrels", "read_run", "run_from_topk", "write_qrels", "write_run"]


def check_trec_id(value: str, what: str = "id") -> str:
    """``value`` if it can be a column of a TREC file, else ``ValueError`` naming it.

    TREC run and qrels files are whitespace-separated, so an id with a space, tab or newline in
    it (or an empty id) would shift the columns and make the file unreadable.
    """
    text = str(value)
    if not text or any(ch.isspace() for ch in text):
        raise ValueError(f"{what} {text!r} cannot be written to a TREC file: TREC ids cannot be empty "
                         f"or contain whitespace")
    return text


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], *, run_name: str = "umr",
              task_tags: Mapping[str, str] | None = None) -> None:
    """Write ``qid Q0 docid rank score run_name`` lines (plus ``task_id`` when ``task_tags``).

    Ranks follow trec_eval's order (score descending, ties by docid descending), so reading the
    file back with trec_eval gives exactly the scores umr reports. Scores print in full (they read back bit-exact).
    An id (or the run name, or a task tag) containing whitespace raises ``ValueError`` before
    anything is written.
    """
    check_trec_id(run_name, "run name")
    for qid, scores in run.items():
        check_trec_id(qid, "query id")
        for doc in scores:
            check_trec_id(doc, "document id")
        if task_tags is not None:
            check_trec_id(task_tags.get(qid, "0"), "task tag")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, text=True) as handle:
        for qid in run:
            scores = run[qid]
            for rank, doc in enumerate(trec_order(scores), start=1):
                line = f"{qid} Q0 {doc} {rank} {float(scores[doc])!r} {run_name}"
                if task_tags is not None:
                    line += f" {task_tags.get(qid, '0')}"
                handle.write(line + "\n")


def read_run(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a 6- or 7-column run file into ``{qid: {docid: score}}``."""
    run: dict[str, dict[str, float]] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 6:
                raise ValueError(f"{path}:{line_no}: a run line has 6 or 7 columns, got {len(parts)}")
            run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
    return run


def write_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, int]]) -> None:
    for qid, judged in qrels.items():
        check_trec_id(qid, "query id")
        for did in judged:
            check_trec_id(did, "document id")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for qid, judged in qrels.items():
            for did, rel in judged.items():
                handle.write(f"{qid} 0 {did} {rel}\n")


def run_from_topk(qids: Sequence[str], scores, rows, doc_ids: Sequence[str],
                  skip: Iterable[int] = ()) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` from a top-k search (``rows`` index into ``doc_ids``; -1 = none)."""
    skip = set(skip)
    run: dict[str, dict[str, float]] = {}
    for i, qid in enumerate(qids):
        if i in skip:
            continue
        run[qid] = {doc_ids[r]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
    return run


def drop_identical_ids(run: Mapping[str, Mapping[str, float]], depth: int) -> dict[str, dict[str, float]]:
    """The run without results whose document id is the query's own id, cut to ``depth``.

    BEIR's ``ignore_identical_ids``: on ArguAna, Quora and CQADupStack each query is also in the
    corpus, and finding itself says nothing about a model. The run is searched one deeper, so
    each query keeps ``depth`` results after its own id is dropped.
    """
    out: dict[str, dict[str, float]] = {}
    for qid, scores in run.items():
        kept = [doc for doc in trec_order(scores) if doc != qid][:depth]
        out[qid] = {doc: scores[doc] for doc in kept}
    return out
