"""Training examples, the sources they come from, and the batches the trainer sees.

An :class:`Example` is a query, its positive and optional hard negatives (all
:class:`~umr.types.Item`), tagged with the source it came from. Sources are

* the generic JSONL, one example per line::

      {"query": {"text": ..., "image": ..., "instruction": ...}, "positive": {"text": ..., "image": ...},
       "negatives": [{"id": ..., "text": ..., "image": ..., "rank": 3, "modality": "image", "kind": ...}],
       "source": "name"}

  (image paths relative to the file; ``negatives`` optional; extra negative fields are kept as
  the item's metadata);
* an M-BEIR folder (``query/train/mbeir_*_train.jsonl``, read with :class:`umr.data.mbeir.MBEIR`):
  ``pos_cand_list`` / ``neg_cand_list`` index its candidate pool, UniIR's instructions apply.

A bad example (invalid JSON, no text and no image, a missing image file, a positive id not in
the pool) becomes an :class:`~umr.types.ItemError` naming its file and line; the rest load.

**Batches.** :class:`BatchPlan` draws each epoch's examples from the sources in proportion to
their weights (a source drawn more than its size repeats in a fresh order), then either keeps
every batch to one source (``batching="homogeneous"``, the default, VLM2Vec's interleaving: the
in-batch negatives are of the task's own modality, so they teach the task instead of letting the
model tell tasks apart by modality) or shuffles all sources together (``"mixed"``). The plan
depends only on the seed and the epoch, which is what makes resuming exact.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..data.files import resolve_path
from ..images import image_size
from ..types import Item, ItemError

Batching = Literal["homogeneous", "mixed"]


@dataclass
class Example:
    query: Item
    positive: Item
    negatives: list[Item] = field(default_factory=list)
    source: str = ""
    #: where it was read (``file:line``), for error messages
    where: str = ""
    line: int | None = None


@dataclass
class Source:
    """Where examples come from, and how much of each epoch they make up.

    ``path``: a generic JSONL file or an M-BEIR folder; ``tasks`` picks M-BEIR tasks (default
    all); ``instruction`` is given to queries that carry none of their own; ``weight`` scales
    the source's share of an epoch (1.0 = its own size).
    """

    path: str
    weight: float = 1.0
    instruction: str | None = None
    name: str | None = None
    tasks: list[str] | None = None

    @classmethod
    def parse(cls, value: "str | Path | dict | Source") -> "Source":
        if isinstance(value, Source):
            return value
        if isinstance(value, (str, Path)):
            return cls(path=str(value))
        if isinstance(value, dict):
            unknown = set(value) - {"path", "weight", "instruction", "name", "tasks"}
            if unknown or "path" not in value:
                raise ValueError(f"a data source needs 'path' and may have weight, instruction, name, tasks; "
                                 f"got {sorted(value)}")
            return cls(**value)
        raise ValueError(f"a data source is a path or a mapping, not {type(value).__name__}")

    @property
    def label(self) -> str:
        return self.name or Path(self.path).stem


@dataclass
class Loaded:
    """The examples of one source and the bad ones left out."""

    source: Source
    examples: list[Example]
    errors: list[ItemError]


def load_source(source: Source) -> Loaded:
    path = Path(source.path)
    if path.is_dir():
        examples, errors = read_mbeir_train(path, tasks=source.tasks)
    elif path.is_file():
        examples, errors = read_examples_jsonl(path)
    else:
        raise FileNotFoundError(f"training data {path}: no such file or folder")
    for example in examples:
        if source.instruction is not None and example.query.instruction is None:
            example.query.instruction = source.instruction
        example.source = source.name or example.source or source.label
    return Loaded(source, examples, errors)


def _item(record: Any, *, base: Path, is_query: bool, where: str) -> Item:
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be an object with text and/or image")
    text, image, instruction = record.get("text"), record.get("image"), record.get("instruction")
    for name, value in (("text", text), ("image", image), ("instruction", instruction)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}.{name} must be a string or null")
    if text is not None and not text.strip():
        text = None
    if text is None and image is None:
        raise ValueError(f"{where} has neither text nor image")
    image = resolve_path(base, image)
    if image is not None:
        image_size(image)  # refuses a missing or unreadable file now, not mid-training
    metadata = {k: v for k, v in record.items() if k not in ("id", "text", "image", "instruction")}
    item_id = record.get("id")
    return Item(text=text, image=image, instruction=instruction if is_query else None, is_query=is_query,
                id=None if item_id is None else str(item_id), metadata=metadata)


def parse_example(record: Any, *, base: Path) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("query", "positive"):
        if key not in record:
            raise ValueError(f"no {key!r}")
    negatives = record.get("negatives") or []
    if not isinstance(negatives, list):
        raise ValueError("'negatives' must be a list")
    return Example(
        query=_item(record["query"], base=base, is_query=True, where="query"),
        positive=_item(record["positive"], base=base, is_query=False, where="positive"),
        negatives=[_item(n, base=base, is_query=False, where=f"negatives[{i}]") for i, n in enumerate(negatives)],
        source=str(record.get("source") or ""),
    )


def read_examples_jsonl(path: str | Path) -> tuple[list[Example], list[ItemError]]:
    """Examples of a generic training JSONL; a bad line is an error naming the file and line."""
    path = Path(path)
    examples, errors = [], []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            record = None
            try:
                record = json.loads(raw)
                example = parse_example(record, base=path.parent)
                example.where, example.line = f"{path}:{line_no}", line_no
                examples.append(example)
            except (ValueError, ItemError) as exc:  # JSONDecodeError is a ValueError
                reason = exc.reason if isinstance(exc, ItemError) else str(exc)
                item_id = record.get("id") if isinstance(record, dict) else None
                errors.append(ItemError(None if item_id is None else str(item_id),
                                        f"{path}: {reason}", line=line_no))
    return examples, errors


def read_mbeir_train(root: str | Path, *, tasks: list[str] | None = None,
                     split: str = "train") -> tuple[list[Example], list[ItemError]]:
    """Examples of M-BEIR training queries: each positive of ``pos_cand_list`` (the first),
    its ``neg_cand_list`` as hard negatives, UniIR's instruction for the query."""
    from ..data.files import read_jsonl_records
    from ..data.mbeir import MBEIR

    mbeir = MBEIR(root, split=split)
    examples, errors = [], []
    for name in tasks or mbeir.task_names:
        pool = "local"
        try:
            mbeir.local_pool_path(name)
        except FileNotFoundError:
            pool = "global"
        task = mbeir.task(name, pool=pool)
        by_id = {c.id: c for c in task.candidates}
        records = {str(r["qid"]): r for r in read_jsonl_records(mbeir.query_files[name])}
        for line_no, query in enumerate(task.queries, start=1):
            record = records[query.id]
            try:
                positives = [str(d) for d in record.get("pos_cand_list") or []]
                if not positives:
                    raise ValueError("no pos_cand_list")
                missing = [d for d in positives + [str(d) for d in record.get("neg_cand_list") or []]
                           if d not in by_id]
                if missing:
                    raise ValueError(f"candidate {missing[0]} is not in the {pool} pool")
                if query.image is not None:
                    image_size(query.image, item_id=query.id)
                candidates = [by_id[d] for d in positives[:1] + [str(n) for n in record.get("neg_cand_list") or []]]
                for c in candidates:
                    if c.image is not None:
                        image_size(c.image, item_id=c.id)
                query.modality  # noqa: B018 - raises for a query with neither text nor image
                examples.append(Example(query=query, positive=candidates[0], negatives=candidates[1:],
                                        source=name, where=f"{mbeir.query_files[name]}:{line_no}", line=line_no))
            except (ValueError, ItemError) as exc:
                reason = exc.reason if isinstance(exc, ItemError) else str(exc)
                errors.append(ItemError(query.id, f"{mbeir.query_files[name].name}: {reason}", line=line_no))
    return examples, errors


@dataclass
class BatchPlan:
    """Which examples (indices into ``examples``) form each global batch of an epoch.

    ``sizes[s]`` examples belong to source ``s`` (laid out one source after another);
    ``weights[s]`` scales its share. A global batch holds ``global_batch`` examples; the last
    short batch of a source is kept only when ``keep_short`` (one process: nothing is lost;
    several processes need equal shares).
    """

    sizes: list[int]
    weights: list[float]
    global_batch: int
    seed: int
    batching: Batching = "homogeneous"
    keep_short: bool = True

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:plan:{epoch}")
        starts = [sum(self.sizes[:s]) for s in range(len(self.sizes))]
        per_source: list[list[int]] = []
        for s, size in enumerate(self.sizes):
            want = max(1, round(size * self.weights[s])) if size else 0
            drawn: list[int] = []
            while len(drawn) < want:
                order = list(range(size))
                rng.shuffle(order)
                drawn.extend(starts[s] + i for i in order[: want - len(drawn)])
            per_source.append(drawn)
        if self.batching == "mixed":
            everything = [i for drawn in per_source for i in drawn]
            rng.shuffle(everything)
            per_source = [everything]
        batches = []
        for drawn in per_source:
            for start in range(0, len(drawn), self.global_batch):
                chunk = drawn[start: start + self.global_batch]
                if len(chunk) == self.global_batch or self.keep_short:
                    batches.append(chunk)
        rng.shuffle(batches)
        return batches


def sample_negatives(example: Example, k: int, *, seed: int, epoch: int, index: int) -> list[Item]:
    """``k`` of the example's hard negatives, drawn afresh each epoch (seeded: resumable)."""
    if k <= 0 or not example.negatives:
        return []
    if len(example.negatives) <= k:
        return list(example.negatives)
    rng = random.Random(f"{seed}:negatives:{epoch}:{index}")
    return rng.sample(example.negatives, k)
