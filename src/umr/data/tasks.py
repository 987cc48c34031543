"""A retrieval task as the evaluator sees it: queries, a candidate pool, qrels, and its category."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.items import Item, Modality

#: UMRB's categories, by group, in the papers' order.
UMRB_GROUPS: dict[str, list[str]] = {
    "single-modal": ["T→T", "I→I"],
    "cross-modal": ["T→I", "T→VD", "I→T"],
    "fused-modal": ["T→IT", "IT→T", "IT→I", "IT→IT"],
    #: umr's own (issue 25): text to video, video to text, video to video
    "video": ["T→V", "V→T", "V→V"],
}
CATEGORIES = [c for group in UMRB_GROUPS.values() for c in group]
_SHORT = {Modality.TEXT: "T", Modality.IMAGE: "I", Modality.FUSED: "IT", Modality.VIDEO: "V", Modality.VIDEO_TEXT: "VT"}
_LONG = {v: k for k, v in _SHORT.items()}


def category_of(query_modality: Modality | str, target_modality: Modality | str) -> str:
    """``T→I`` style category from a query and a target modality."""
    return f"{_SHORT[Modality.parse(query_modality)]}→{_SHORT[Modality.parse(target_modality)]}"


def parse_category(text: str) -> str:
    """Accept ``t2i``, ``t->i``, ``T→I``, ``t→vd``, ``t2v``; return UMRB's spelling."""
    key = text.strip().upper().replace("->", "→").replace("2", "→").replace(" ", "")
    if key not in CATEGORIES and key not in ("I→IT",):
        raise ValueError(f"unknown category {text!r}: use one of {', '.join(CATEGORIES)}")
    return key


def group_of(category: str) -> str | None:
    for group, members in UMRB_GROUPS.items():
        if category in members:
            return group
    return None


def target_of_category(category: str) -> Modality:
    right = category.split("→")[1]
    return Modality.IMAGE if right == "VD" else _LONG[right]


@dataclass
class RetrievalTask:
    """Queries, the pool they search, and which candidates are relevant to which query.

    ``qrels[qid][did]`` is the graded relevance. ``target_modality`` is the modality a correct
    answer has (for the modality-bias diagnostic); ``hit_k`` is the k of the headline
    Recall@k (UniIR's per-dataset choice). ``run_tag`` goes into the 7th column of UniIR-style
    run files (M-BEIR's task id).

    ``average`` says which queries a mean is taken over. ``"run"`` (BEIR, MTEB, trec_eval): the
    queries that were run and have judgements; a qrels entry for a query the task does not hold,
    or a query that could not be embedded, is left out (and counted as dropped). ``"queries"``
    (UniIR on M-BEIR): every query of the task; one that failed or has no positive scores 0.
    ``ignore_identical_ids`` drops results whose id equals the query's id before scoring, as
    BEIR's ``EvaluateRetrieval`` does by default (ArguAna, Quora and CQADupStack hold each query
    in the corpus too); the search then reaches one deeper so that ``depth`` results remain.
    """

    name: str
    queries: list[Item]
    candidates: list[Item]
    qrels: dict[str, dict[str, int]]
    category: str
    target_modality: Modality
    dataset: str = ""
    pool: str = "local"
    hit_k: int = 5
    run_tag: str = "0"
    #: the headline metric; None = ``hit@{hit_k}`` (UniIR's Recall@k)
    main_metric: str | None = None
    average: Literal["run", "queries"] = "run"
    ignore_identical_ids: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        return self.main_metric or f"hit@{self.hit_k}"

    @property
    def group(self) -> str | None:
        return group_of(self.category)

    def candidate_modalities(self) -> dict[str, str]:
        """Each candidate's modality; failed candidates (no content, a bad record) have none."""
        return {c.id: str(c.modality) for c in self.candidates if c.problem is None}
