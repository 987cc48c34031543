"""Relevance judgements (qrels) as TREC, M-BEIR and BEIR write them."""

from __future__ import annotations

from pathlib import Path


def read_qrels(path: str | Path) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Read qrels: TREC (``qid 0 did rel``), M-BEIR (``qid 0 did rel task_id``) or BEIR TSV.

    BEIR's TSV (``query-id<TAB>corpus-id<TAB>score`` with a header) is recognised by its header.
    Returns ``(qrels, task_ids)``; ``task_ids`` maps qid to M-BEIR's 5th column when present.
    """
    qrels: dict[str, dict[str, int]] = {}
    task_ids: dict[str, str] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            parts = [p.strip() for p in parts]
            if not parts or parts == [""]:
                continue
            if line_no == 1 and parts[0].lower() in ("query-id", "query_id", "qid"):
                continue  # BEIR header
            if len(parts) == 3:
                qid, did, rel = parts
            elif len(parts) in (4, 5):
                qid, _, did, rel = parts[:4]
                if len(parts) == 5:
                    task_ids.setdefault(qid, parts[4])
            else:
                raise ValueError(f"{path}:{line_no}: expected 3 (BEIR), 4 (TREC) or 5 (M-BEIR) columns, "
                                 f"got {len(parts)}")
            try:
                grade = int(float(rel))
            except ValueError:
                raise ValueError(f"{path}:{line_no}: relevance {rel!r} is not a number") from None
            qrels.setdefault(qid, {})[did] = grade
    return qrels, task_ids
