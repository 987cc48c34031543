"""Hard-negative mining, modality-aware as in MM-Embed (arXiv 2411.02571, §4.2) or plain (ANCE).

A retriever trained with random in-batch negatives ranks each training query's candidates;
what it ranks high but is wrong becomes that query's hard negatives:

* **type 1** (``wrong_modality``): candidates within the top ``k`` whose modality is not the
  task's target modality (a fused image+caption returned for "find the image" is the
  modality bias MM-Embed removes);
* **type 2** (``same_modality``): candidates of the target modality, not positives, ranked
  beyond ``skip`` within the top ``k`` (the very top is left out: many of those are unlabelled
  positives);
* **plain** (``--plain``, ANCE-style): any non-positive ranked beyond ``skip`` within the top ``k``.

Positives are never negatives. The target modality is the one given, else the M-BEIR task's
candidate modality, else the modality of the example's positive. The pool is embedded into a
:class:`~umr.index.Index` (FAISS, resumable: a rerun embeds only what is new), so pools of
millions of candidates work as ``umr index`` does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..core.atomic import atomic_writer
from ..core.fingerprint import file_digest
from ..core.items import IMAGE_TEXT_MODALITIES, Item, ItemError, Modality
from ..data.corpus import count_corpus, read_corpus
from ..index import Index, Unrepresentable
from ..models.identity import model_identity
from .data import JsonlExamples, MBEIRExamples

KINDS = ("wrong_modality", "same_modality", "plain")


@dataclass
class MineSettings:
    """What ``umr mine`` selects; the defaults are MM-Embed's (top 50, type 2 beyond rank 45)."""

    top_k: int = 50
    skip: int = 45
    #: at most this many negatives of each kind (the best-ranked ones); None keeps all
    negatives: int | None = None
    #: the target modality of every query; None: the task's, else the positive's
    target_modality: str | None = None
    plain: bool = False
    #: the instruction of queries that carry none of their own (M-BEIR: instead of UniIR's)
    instruction: str | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top-k must be at least 1, not {self.top_k}")
        if not 0 <= self.skip < self.top_k:
            raise ValueError(f"skip must be in 0..top-k-1 (top-k {self.top_k}), not {self.skip}")
        if self.negatives is not None and self.negatives < 1:
            raise ValueError(f"negatives must be at least 1 (or unset for all), not {self.negatives}")
        if self.target_modality is not None:
            self.target_modality = Modality.parse(self.target_modality, among=IMAGE_TEXT_MODALITIES).value


@dataclass(frozen=True)
class Ranked:
    """One retrieved candidate: its id, 1-based rank and modality."""

    id: str
    rank: int
    modality: str


def select_negatives(ranking: Sequence[Ranked], positives: set[str], target: str,
                     settings: MineSettings) -> list[tuple[Ranked, str]]:
    """The hard negatives of one query, ``(candidate, kind)`` in rank order: the definition itself."""
    target = Modality.parse(target).value
    chosen: list[tuple[Ranked, str]] = []
    for cand in sorted(ranking, key=lambda c: c.rank):
        if cand.rank > settings.top_k or cand.id in positives:
            continue
        if settings.plain:
            if cand.rank > settings.skip:
                chosen.append((cand, "plain"))
        elif Modality.parse(cand.modality).value != target:
            chosen.append((cand, "wrong_modality"))
        elif cand.rank > settings.skip:
            chosen.append((cand, "same_modality"))
    if settings.negatives is not None:
        kept: dict[str, int] = {}
        capped = []
        for cand, kind in chosen:
            if kept.get(kind, 0) < settings.negatives:
                kept[kind] = kept.get(kind, 0) + 1
                capped.append((cand, kind))
        chosen = capped
    return chosen


@dataclass
class MiningQuery:
    """One training example to mine for: its query, its positive(s) and target modality."""

    key: str  # names the example in errors: its query id
    query: Item
    #: the example as it will be written (query, positive, source), its negatives filled in by mining
    example: dict[str, Any]
    positive_ids: set[str] = field(default_factory=set)
    #: (text, absolute image path) of a positive without an id, matched against the pool's contents
    positive_content: tuple[str | None, str | None] | None = None
    target_modality: str | None = None
    #: the pool id whose text and image become the written positive (M-BEIR gives ids only)
    positive_from_pool: str | None = None


@dataclass
class MineSummary:
    examples: int = 0
    negatives: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    #: examples for which no negative was found
    empty: int = 0
    #: examples whose positive is not in the pool (nothing of it to exclude)
    positives_not_in_pool: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        found = ", ".join(f"{n} {k}" for k, n in self.negatives.items() if n)
        return (f"{self.examples} example(s) written ({found or 'no negatives'}; {self.empty} without "
                f"any), {len(self.errors)} error(s)")


# -- reading training queries ----------------------------------------------------------------------


def _abs(image: Any) -> str | None:
    return os.path.abspath(image) if isinstance(image, (str, Path)) else None


def read_training_queries(path: str | os.PathLike, settings: MineSettings) -> Iterator[MiningQuery | ItemError]:
    """The examples of a training JSONL, read as ``umr train`` reads them (bad lines are errors)."""
    examples, errors = JsonlExamples(path).read_all()
    yield from errors
    for number, example in enumerate(examples, start=1):
        q, pos = example.query, example.positive
        instruction = q.instruction or settings.instruction
        qid = q.id if q.id is not None else f"example-{number}"
        query = {"id": q.id, "text": q.text, "image": _abs(q.image), "instruction": instruction}
        positive = {"id": pos.id, "text": pos.text, "image": _abs(pos.image)}
        yield MiningQuery(
            key=qid, query=Item.query(text=q.text, image=q.image, instruction=instruction, id=qid),
            example={"query": {k: v for k, v in query.items() if v is not None or k != "id"},
                     "positive": {k: v for k, v in positive.items() if v is not None or k != "id"},
                     "source": example.source},
            positive_ids={pos.id} if pos.id is not None else set(),
            positive_content=None if pos.id is not None else _content_key(pos.text, pos.image),
            target_modality=settings.target_modality or pos.modality.value)


def read_mbeir_queries(root: str | os.PathLike, settings: MineSettings, *, split: str = "train",
                       tasks: Iterable[str] | None = None, seed: int = 0) -> Iterator[MiningQuery | ItemError]:
    """M-BEIR training queries as ``umr train`` reads them (:class:`~umr.train.data.MBEIRExamples`:
    UniIR's instructions, or ``settings.instruction``), the task's candidate modality as target,
    every ``pos_cand_list`` positive excluded; a bad query is its error, the others go on."""
    reader = MBEIRExamples(root, tasks=tasks, split=split, instruction=settings.instruction, seed=seed)
    for index in range(len(reader)):
        try:
            found = reader.query(index)
        except ItemError as exc:
            yield exc
            continue
        q = found.query
        query = {"id": q.id, "text": q.text, "image": _abs(q.image), "instruction": q.instruction}
        yield MiningQuery(
            key=q.id, query=q, example={"query": query, "positive": None, "source": found.task},
            positive_ids=set(found.positives), target_modality=settings.target_modality or found.target_modality,
            positive_from_pool=found.positives[0])


# -- the pool --------------------------------------------------------------------------------------


def open_pool_index(model, pool: str | os.PathLike, folder: str | os.PathLike, *, method: str = "exact",
                    image_root=None, batch_size: int | None = None, model_options: dict | None = None,
                    progress: Callable[[int], None] | None = None):
    """The pool embedded by ``model`` in ``folder``: created, or brought up to date (resumable).

    An index embedded by another model, or another state of it (other weights at the same path,
    other vector options), is refused by the index's own model check (:class:`~umr.index.ModelMismatch`).
    """
    folder = Path(folder)
    if Index.exists(folder):
        index = Index.open(folder, model=model, writable=True)
    else:
        index = Index.create(folder, model, method=method, model_options=model_options)
    summary = index.index_corpus(pool, image_root=image_root, batch_size=batch_size, progress=progress)
    return index, summary


def _content_key(text: str | None, image: Any) -> tuple[str | None, str | None]:
    return (text or None, _abs(image))


def scan_pool(pool: str | os.PathLike, *, ids: set[str], keys: set[tuple] = frozenset(), image_root=None
              ) -> tuple[dict[str, Item], dict[tuple, set[str]]]:
    """One pass over the pool: the items of ``ids``, and the ids holding each content key in ``keys``
    (all of them: a duplicate of a positive is a positive too)."""
    by_id: dict[str, Item] = {}
    by_key: dict[tuple, set[str]] = {}
    for entry in read_corpus(pool, image_root=image_root):
        if isinstance(entry, ItemError) or not (entry.id in ids or keys):
            continue
        try:
            item = entry.load()
        except ItemError:
            continue  # reported when the pool was indexed
        if entry.id in ids:
            by_id[entry.id] = item
        key = _content_key(item.text, item.image)
        if key in keys:
            by_key.setdefault(key, set()).add(entry.id)
    return by_id, by_key


def _candidate_json(item: Item) -> dict[str, Any]:
    return {"id": item.id, "text": item.text, "image": _abs(item.image)}


# -- mining ----------------------------------------------------------------------------------------


def mine(model, queries: Iterable[MiningQuery | ItemError], index, pool: str | os.PathLike,
         output: str | os.PathLike, settings: MineSettings, *, image_root=None, batch_size: int | None = None,
         chunk_size: int = 256, progress: Callable[[int], None] | None = None,
         provenance: dict[str, Any] | None = None) -> MineSummary:
    """Mine every query against ``index`` (the pool embedded by ``model``) and write ``output``.

    Writes the training JSONL (atomically), ``OUTPUT.errors.jsonl`` (one line per example that
    could not be mined) and the provenance sidecar ``OUTPUT.provenance.json``.
    """
    started = time.monotonic()
    output = Path(output)
    summary = MineSummary()
    mined: list[tuple[MiningQuery, list[tuple[Ranked, str]]]] = []

    def fail(key: str | None, reason: str, line: int | None = None) -> None:
        summary.errors.append({"example": key, "line": line, "error": reason})

    examples = []
    for q in queries:
        if isinstance(q, ItemError):
            fail(q.item_id, q.reason, q.line)
            if progress:
                progress(1)
        else:
            examples.append(q)
    keys = {q.positive_content for q in examples if q.positive_content is not None}
    by_key: dict[tuple, set[str]] = {}
    if keys:  # positives given by content only: find their ids in the pool
        _, by_key = scan_pool(pool, ids=set(), keys=keys, image_root=image_root)
    for q in examples:
        if q.positive_content is not None and q.positive_content in by_key:
            q.positive_ids |= by_key[q.positive_content]

    for start in range(0, len(examples), chunk_size):
        chunk = examples[start:start + chunk_size]
        represented, positions = [], []
        for j, q in enumerate(chunk):
            try:
                represented.append(index.represent(q.query))
                positions.append(j)
            except (ItemError, Unrepresentable) as exc:  # this example only; the rest goes on
                fail(q.key, exc.reason)
        result = model.embed(represented, batch_size=batch_size, show_progress_bar=False, on_error="skip")
        for err in result.errors:
            q = chunk[positions[err.index]]
            fail(q.key, f"query cannot be embedded: {err.reason}")
        if len(result.indices):
            hits = index.search_vectors(result.vectors, k=settings.top_k)
            for row, j in zip(hits, result.indices):
                q = chunk[positions[j]]
                ranking = [Ranked(h.id, h.rank, h.modality) for h in row]
                mined.append((q, select_negatives(ranking, q.positive_ids, q.target_modality, settings)))
        if progress:
            progress(len(chunk))

    ids = {cand.id for _, chosen in mined for cand, _ in chosen}
    ids |= {q.positive_from_pool for q, _ in mined if q.positive_from_pool is not None}
    contents, _ = scan_pool(pool, ids=ids, image_root=image_root)
    positive_ids = sorted({p for q, _ in mined for p in q.positive_ids})
    indexed = {record["id"] for record in index.get(positive_ids) if record is not None}

    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(output, text=True) as handle:
        for q, chosen in mined:
            example = dict(q.example)
            if q.positive_from_pool is not None:
                item = contents.get(q.positive_from_pool)
                if item is None:
                    fail(q.key, f"positive {q.positive_from_pool!r} is not in the pool")
                    continue
                example["positive"] = _candidate_json(item)
            if not q.positive_ids & indexed:
                summary.positives_not_in_pool += 1
            negatives = []
            for cand, kind in chosen:
                item = contents.get(cand.id)
                if item is None:  # the pool changed since it was indexed
                    continue
                negatives.append({**_candidate_json(item), "rank": cand.rank, "modality": cand.modality,
                                  "kind": kind})
                summary.negatives[kind] += 1
            example["negatives"] = negatives
            example["target_modality"] = q.target_modality
            summary.empty += not negatives
            summary.examples += 1
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")

    if summary.errors:
        errors_path(output).write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in summary.errors),
                               encoding="utf-8")
    else:
        errors_path(output).unlink(missing_ok=True)
    summary.seconds = time.monotonic() - started
    record = {**(provenance or {}), "settings": asdict(settings),
              "summary": {"examples": summary.examples, "negatives": summary.negatives, "empty": summary.empty,
                          "positives_not_in_pool": summary.positives_not_in_pool,
                          "errors": len(summary.errors), "seconds": round(summary.seconds, 3)},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    provenance_path(output).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def provenance_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".provenance.json")


def errors_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".errors.jsonl")


def file_fingerprint(path: str | os.PathLike) -> str | None:
    """The content digest of a data file (a folder pool: None; its items carry their own)."""
    path = Path(path)
    return file_digest(path) if path.is_file() else None


def mine_file(model, *, pool: str | os.PathLike, output: str | os.PathLike, settings: MineSettings,
              data: str | os.PathLike | None = None, mbeir: str | os.PathLike | None = None,
              split: str = "train", tasks: Iterable[str] | None = None, seed: int = 0,
              index_dir: str | os.PathLike | None = None, method: str = "exact", image_root=None,
              batch_size: int | None = None, model_options: dict | None = None,
              show_progress: bool = True) -> MineSummary:
    """Mine a training JSONL (``data``) or an M-BEIR folder's training queries (``mbeir``): the
    whole of ``umr mine`` in Python. The pool index goes to ``index_dir`` (default ``OUTPUT.index``)."""
    from tqdm.auto import tqdm

    if (data is None) == (mbeir is None):
        raise ValueError("give exactly one of data (a training JSONL) and mbeir (an M-BEIR folder)")
    output = Path(output)
    index_dir = Path(index_dir) if index_dir is not None else output.with_suffix(".index")
    bar_options = dict(unit="item", dynamic_ncols=True, file=sys.stderr, disable=not show_progress)
    with tqdm(total=count_corpus(pool), desc="embed pool", **bar_options) as bar:
        index, pool_summary = open_pool_index(model, pool, index_dir, method=method,
                                              image_root=image_root, batch_size=batch_size,
                                              model_options=model_options, progress=bar.update)
    with index:
        if data is not None:
            queries = list(read_training_queries(data, settings))
        else:
            queries = list(read_mbeir_queries(mbeir, settings, split=split, tasks=tasks, seed=seed))
        provenance = {
            "model": {"name": str(model.name), "dim": int(model.dim), "options": dict(model_options or {}),
                      "identity": model_identity(model).key()},
            "pool": {"path": str(Path(pool).resolve()), "fingerprint": file_fingerprint(pool),
                     "index": str(index_dir.resolve()), "items": len(index),
                     "skipped": len(pool_summary.skipped), "errors": len(pool_summary.errors)},
            "data": ({"path": str(Path(data).resolve()), "fingerprint": file_fingerprint(data)} if data is not None
                     else {"mbeir": str(Path(mbeir).resolve()), "split": split, "tasks": list(tasks or []),
                           "seed": seed}),
        }
        with tqdm(total=len(queries), desc="mine", **bar_options) as bar:
            return mine(model, queries, index, pool, output, settings, image_root=image_root,
                        batch_size=batch_size, progress=bar.update, provenance=provenance)
