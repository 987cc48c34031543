"""Training examples, the sources they come from, and the batches the trainer sees.

An :class:`Example` is a query, its positive and optional hard negatives (all
:class:`~umr.core.items.Item`), tagged with the source it came from. Sources are

* the generic JSONL, one example per line::

      {"query": {"text": ..., "image": ..., "instruction": ...}, "positive": {"text": ..., "image": ...},
       "negatives": [{"id": ..., "text": ..., "image": ..., "rank": 3, "modality": "image", "kind": ...}],
       "source": "name"}

  (image paths relative to the file; ``negatives`` optional; extra negative fields are kept as
  the item's metadata);
* an M-BEIR folder (``query/train/mbeir_*_train.jsonl``, built with :class:`umr.data.mbeir.MBEIR`'s
  own record readers): ``pos_cand_list`` / ``neg_cand_list`` index its candidate pool (the task's
  local pool, else the global one), UniIR's instructions apply. ``umr mine`` reads M-BEIR through
  the same :class:`MBEIRExamples`.

**Lazy validation.** Start-up only counts each source's examples (the byte offset of every
line), so it costs the same for a hundred examples or millions, on every start and resume. An
example is parsed and checked (fields, text or image, image files, candidate ids, what the model
can embed) when a batch draws it. A bad one — invalid JSON, wrong field types, neither text nor
image, a missing image file, an id not in the pool — becomes an :class:`~umr.core.items.ItemError`
naming its file, line and reason, reported once; its place in the batch goes to another example
of its source (chosen deterministically, never one already in the batch), so batches keep their
size on every process and a resumed run draws exactly what an uninterrupted one does. The
trainer rejects an example whose item fails later, when it is prepared (an image that is
readable up to its header only): :meth:`TrainingData.reject` excludes it from later draws the
same way, and the bad examples travel in checkpoints.

**Batches.** :class:`BatchPlan` draws each epoch's examples from the sources in proportion to
their weights (a source drawn more than its size repeats in a fresh order), then either keeps
every batch to one source (``batching="homogeneous"``, the default, VLM2Vec's interleaving: the
in-batch negatives are of the task's own modality, so they teach the task instead of letting the
model tell tasks apart by modality) or shuffles all sources together (``"mixed"``). The plan
depends only on the seed and the epoch, which is what makes resuming exact.
"""

from __future__ import annotations

import bisect
import random
import sys
from abc import ABC, abstractmethod
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from ..core.images import image_size
from ..core.items import Item, ItemError
from ..data.files import image_field, jsonl_records, parse_json_record, read_item, record_id, string_field
from ..data.mbeir import MBEIR, MBEIR_TASKS, candidate_ids, parse_candidate

Batching = Literal["homogeneous", "mixed"]
#: the errors one bad record raises while it is parsed (JSON, field types, files, M-BEIR's instruction table)
RECORD_ERRORS = (ItemError, ValueError, TypeError, OSError, KeyError)
#: bad examples printed as they are found (all of them go to the run's errors.jsonl)
PRINTED_ERRORS = 10


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
    all); ``instruction`` is given to queries that carry none of their own (M-BEIR: instead of
    UniIR's); ``weight`` scales the source's share of an epoch (1.0 = its own size).
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


class NoUsableExamples(ValueError):
    """Every example of a source turned out bad: there is nothing left to train on."""


# -- one source's examples, read on demand -----------------------------------------------------------


class ExampleReader(ABC):
    """One source's examples: counted when opened, each parsed and checked only when read."""

    path: Path

    @abstractmethod
    def __len__(self) -> int:
        """How many examples (good or bad) the source holds."""

    @abstractmethod
    def read(self, index: int) -> Example:
        """Example ``index`` (0-based), or :class:`ItemError` naming its file, line and reason."""

    def read_all(self) -> tuple[list[Example], list[ItemError]]:
        """Every example, and the bad ones (all read now: for small files and tools, not training)."""
        examples, errors = [], []
        for index in range(len(self)):
            try:
                examples.append(self.read(index))
            except ItemError as exc:
                errors.append(exc)
        return examples, errors


class JsonlLines:
    """The byte offset and line number of every non-blank line of a text file: one sequential
    scan, a few bytes per line kept (no line is parsed), so any line can be read again at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offsets, self.lines = array("q"), array("i")  # 12 bytes a line
        position = 0
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    self.offsets.append(position)
                    self.lines.append(number)
                position += len(raw)

    def __len__(self) -> int:
        return len(self.offsets)

    def text(self, index: int) -> str:
        with self.path.open("rb") as handle:
            handle.seek(self.offsets[index])
            return handle.readline().decode("utf-8", errors="replace")

    def record(self, index: int) -> dict:
        """Line ``index`` as a JSON object; the :class:`ItemError` of a line that is not one."""
        record = parse_json_record(self.text(index), line=self.lines[index])
        if isinstance(record, ItemError):
            raise record
        return record


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ItemError):
        return exc.reason
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])  # str() of a KeyError quotes it
    return str(exc)


def _item_id(record: Any, key: str = "id") -> str | None:
    value = record.get(key) if isinstance(record, dict) else None
    return str(value) if isinstance(value, (str, int)) else None


class JsonlExamples(ExampleReader):
    """The generic training JSONL (see the module docstring), one example per non-blank line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lines = JsonlLines(self.path)

    def __len__(self) -> int:
        return len(self.lines)

    def read(self, index: int) -> Example:
        line = self.lines.lines[index]
        record = None
        try:
            record = self.lines.record(index)
            example = parse_example(record, base=self.path.parent)
        except RECORD_ERRORS as exc:
            raise ItemError(_item_id(record), f"{_where(self.path, line)}: {_reason(exc)}", line=line) from None
        example.where, example.line = _where(self.path, line), line
        return example


def _item(record: Any, *, base: Path, is_query: bool, where: str) -> Item:
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be an object with text and/or image")
    try:
        item_id = record_id(record, "id") if record.get("id") not in (None, "") else None  # empty is none
        text = string_field(record, "text", item_id)
        image = image_field(record, "image", item_id, base)
        instruction = string_field(record, "instruction", item_id)
    except ItemError as exc:
        raise ItemError(exc.item_id, f"{where}: {exc.reason}") from None
    if image is not None:
        image_size(image, item_id=item_id)  # a missing or unreadable file
    metadata = {k: v for k, v in record.items() if k not in ("id", "text", "image", "instruction")}
    item = Item(text=text, image=image, instruction=instruction if is_query else None, is_query=is_query,
                id=item_id, metadata=metadata)
    if item.problem is not None:
        raise ValueError(f"{where} {item.problem}")
    return item


def parse_example(record: dict, *, base: Path) -> Example:
    for key in ("query", "positive"):
        if key not in record:
            raise ValueError(f"no {key!r}")
    negatives = record.get("negatives") or []
    if not isinstance(negatives, list):
        raise ValueError("'negatives' must be a list")
    source = record.get("source")
    if source is not None and not isinstance(source, str):
        raise ValueError(f"'source' must be a string, not {type(source).__name__}")
    return Example(
        query=_item(record["query"], base=base, is_query=True, where="query"),
        positive=_item(record["positive"], base=base, is_query=False, where="positive"),
        negatives=[_item(n, base=base, is_query=False, where=f"negatives[{i}]") for i, n in enumerate(negatives)],
        source=source or "",
    )


def read_examples_jsonl(path: str | Path) -> tuple[list[Example], list[ItemError]]:
    """Examples of a generic training JSONL, all read now; a bad line is an error naming the file and line."""
    return JsonlExamples(path).read_all()


# -- M-BEIR ----------------------------------------------------------------------------------------------


@dataclass
class MBEIRQuery:
    """One M-BEIR training query as its file gives it: the query item, the ids of its positives
    (``pos_cand_list``) and hard negatives (``neg_cand_list``), its task's candidate modality."""

    task: str
    query: Item
    positives: list[str]
    negatives: list[str]
    target_modality: str
    where: str
    line: int


class _Pool:
    """An M-BEIR candidate pool by id (:func:`~umr.data.mbeir.parse_candidate` of each record);
    its unusable records are remembered with their line, so an example that names one says why."""

    def __init__(self, path: Path, root: Path):
        self.path = path
        self.items: dict[str, Item] = {}
        self.bad: dict[str, str] = {}
        for line, record in jsonl_records(path):
            item = read_item(lambda r: parse_candidate(r, root), record, where=path.name, line=line, is_query=False)
            if item.problem is None:
                self.items[item.id] = item
            else:
                self.bad[item.id] = f"{_where(path, line)}: {item.problem}"

    def get(self, did: str, role: str) -> Item:
        if did in self.items:
            return self.items[did]
        if did in self.bad:
            raise ValueError(f"{role} {did}: its pool record is bad ({self.bad[did]})")
        raise ValueError(f"{role} {did} is not in the pool {self.path}")


class MBEIRExamples(ExampleReader):
    """The training queries of an M-BEIR folder, task after task, as examples: the query (UniIR's
    instruction, or ``instruction`` for every query), its first ``pos_cand_list`` candidate as the
    positive and its ``neg_cand_list`` as hard negatives, taken from the task's local pool, else the
    global one. Counting is one scan of the query files; a pool is read when one of its tasks' queries
    is first read."""

    def __init__(self, root: str | Path, *, tasks: Iterable[str] | None = None, split: str = "train",
                 instruction: str | None = None, seed: int = 0):
        self.path = Path(root)
        self.mbeir = MBEIR(root, split=split)
        names = list(tasks) if tasks else self.mbeir.task_names
        unknown = [n for n in names if n not in self.mbeir.query_files]
        if unknown:
            raise ValueError(f"no M-BEIR {split} task {unknown[0]!r}; have: {', '.join(self.mbeir.task_names)}")
        self.instruction, self.seed = instruction, seed
        self.policy = "none" if instruction is not None else "random"
        if self.policy != "none":
            self.mbeir.require_instructions()
        self.tasks: list[tuple[str, JsonlLines, Path, str | None]] = []
        for name in names:
            try:
                pool = self.mbeir.local_pool_path(name)
            except FileNotFoundError:
                pool = self.mbeir.global_pool_path()
                if not pool.is_file():
                    raise FileNotFoundError(f"M-BEIR task {name}: no local pool in {pool.parent.parent / 'local'} "
                                            f"and no global pool {pool}") from None
            target = MBEIR_TASKS.get(int(name.rsplit("_task", 1)[1]), (None, None))[1]
            self.tasks.append((name, JsonlLines(self.mbeir.query_files[name]), pool, target))
        self.starts = [0]
        for _, lines, _, _ in self.tasks:
            self.starts.append(self.starts[-1] + len(lines))
        self._pools: dict[Path, _Pool] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def pool(self, path: Path) -> _Pool:
        if path not in self._pools:
            self._pools[path] = _Pool(path, self.mbeir.root)
        return self._pools[path]

    def query(self, index: int) -> MBEIRQuery:
        """Query ``index`` with its candidate ids (the positives checked against the pool), or
        :class:`ItemError` naming its file, line and reason."""
        task = bisect.bisect_right(self.starts, index) - 1
        name, lines, pool_path, target = self.tasks[task]
        local = index - self.starts[task]
        line = lines.lines[local]
        record = None
        try:
            record = lines.record(local)
            qid = record_id(record, "qid")
            positives = candidate_ids(record, "pos_cand_list", qid)
            negatives = candidate_ids(record, "neg_cand_list", qid)
            if not positives:
                raise ValueError("no positive (pos_cand_list is empty)")
            pool = self.pool(pool_path)
            first = pool.get(positives[0], "positive")
            query = self.mbeir.query_item(name, record, candidate_modality=str(first.modality),
                                          instruction_policy=self.policy, seed=self.seed)
            if self.instruction is not None:
                query.instruction = self.instruction
            if query.problem is not None:
                raise ItemError(query.id, query.problem)
            if query.image is not None:
                image_size(query.image, item_id=query.id)
        except RECORD_ERRORS as exc:
            raise ItemError(_item_id(record, "qid"), f"{_where(lines.path, line)}: {_reason(exc)}", line=line) from None
        return MBEIRQuery(task=name, query=query, positives=positives, negatives=negatives,
                          target_modality=target or str(first.modality), where=_where(lines.path, line), line=line)

    def read(self, index: int) -> Example:
        found = self.query(index)
        task = bisect.bisect_right(self.starts, index) - 1
        pool = self.pool(self.tasks[task][2])
        try:
            candidates = [pool.get(found.positives[0], "positive")]
            candidates += [pool.get(d, "negative") for d in found.negatives]
            for candidate in candidates:
                if candidate.image is not None:
                    image_size(candidate.image, item_id=candidate.id)
        except RECORD_ERRORS as exc:
            raise ItemError(found.query.id, f"{found.where}: {_reason(exc)}", line=found.line) from None
        return Example(query=found.query, positive=candidates[0], negatives=candidates[1:], source=found.task,
                       where=found.where, line=found.line)


def read_mbeir_train(root: str | Path, *, tasks: list[str] | None = None,
                     split: str = "train") -> tuple[list[Example], list[ItemError]]:
    """Examples of M-BEIR training queries (:class:`MBEIRExamples`), all read now."""
    return MBEIRExamples(root, tasks=tasks, split=split).read_all()


def open_source(source: Source) -> ExampleReader:
    """The reader of a source: an M-BEIR folder or a generic JSONL file (counted, nothing parsed)."""
    path = Path(source.path)
    if path.is_dir():
        return MBEIRExamples(path, tasks=source.tasks, instruction=source.instruction)
    if path.is_file():
        return JsonlExamples(path)
    raise FileNotFoundError(f"training data {path}: no such file or folder")


# -- every source, as batches draw them --------------------------------------------------------------

_UNKNOWN, _GOOD, _BAD = 0, 1, 2


class TrainingData:
    """Every source's examples, laid out one source after another (example ``i`` of the whole is
    an index into that layout, as :class:`BatchPlan` draws them).

    Opening counts the examples; :meth:`draw` reads and checks those a batch needs (``check``:
    what the model can embed, e.g. :meth:`~umr.models.base.Embedder.check`). Each example's verdict
    is remembered (a byte per example), so a good one is checked once and a bad one is reported
    once and never drawn again. An example can also turn out bad later, when one of its items
    fails to prepare (:meth:`reject`): from then on it is excluded the same way. The bad examples
    go into checkpoints (:meth:`error_state`) and come back on resume (:meth:`restore_errors`).
    """

    def __init__(self, sources: Iterable["Source | str | dict"], *, check: Callable[[Item], Any] | None = None):
        self.sources = [Source.parse(s) for s in sources]
        self.readers = [open_source(s) for s in self.sources]
        for source, reader in zip(self.sources, self.readers):
            if not len(reader):
                raise NoUsableExamples(f"{source.path}: no training examples")
        self.sizes = [len(r) for r in self.readers]
        self.weights = [float(s.weight) for s in self.sources]
        self.starts = [0]
        for size in self.sizes:
            self.starts.append(self.starts[-1] + size)
        self.check = check
        #: the bad examples found so far (by index), in the order they were found
        self.bad: dict[int, ItemError] = {}
        self._verdicts = [bytearray(size) for size in self.sizes]

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def errors(self) -> list[ItemError]:
        """The bad examples' errors, in the order they were found."""
        return list(self.bad.values())

    def _locate(self, index: int) -> tuple[int, int]:
        """``(source, index within it)`` of example ``index``."""
        s = bisect.bisect_right(self.starts, index) - 1
        return s, index - self.starts[s]

    def read(self, index: int) -> Example | None:
        """Example ``index`` checked, or None when it is bad (reported the first time)."""
        s, local = self._locate(index)
        verdicts = self._verdicts[s]
        if verdicts[local] == _BAD:
            return None
        source = self.sources[s]
        try:
            example = self.readers[s].read(local)
            if source.instruction is not None and example.query.instruction is None:
                example.query.instruction = source.instruction
            example.source = source.name or example.source or source.label
            if verdicts[local] == _UNKNOWN and self.check is not None:
                for item in (example.query, example.positive, *example.negatives):
                    try:
                        self.check(item)
                    except ItemError as exc:
                        raise example_error(example, exc) from None
        except ItemError as exc:
            self.reject(index, exc)
            return None
        verdicts[local] = _GOOD
        return example

    def reject(self, index: int, error: ItemError) -> None:
        """Example ``index`` is bad (``error`` names its file, line and reason): reported once,
        never drawn again."""
        s, local = self._locate(index)
        if self._verdicts[s][local] == _BAD:
            return
        self._verdicts[s][local] = _BAD
        self.bad[index] = error
        if len(self.bad) <= PRINTED_ERRORS:
            print(f"umr train: skipping a bad example: {error.reason}", file=sys.stderr)
            if len(self.bad) == PRINTED_ERRORS:
                print("umr train: further bad examples are listed in OUTPUT/errors.jsonl only", file=sys.stderr)

    def draw(self, batch: list[int], *, rank: int = 0, world: int = 1) -> list[tuple[int, Example]]:
        """``(index, example)`` for process ``rank``'s share of a global ``batch`` (``world``
        processes, equal shares). A bad example's place goes to the next good example of its
        source after a point fixed by its index, never one of the batch's, and only one whose
        index is ``rank`` modulo ``world``: the same choice on every run, and no two processes
        ever pick the same one, so no example appears twice in a global batch."""
        share = len(batch) // world
        taken = set(batch)
        drawn = []
        for index in batch[rank * share: (rank + 1) * share]:
            found = self._usable(index, taken, rank=rank, world=world)
            if found is not None:
                taken.add(found[0])
                drawn.append(found)
        return drawn

    def _usable(self, index: int, taken: set[int], *, rank: int, world: int) -> tuple[int, Example] | None:
        example = self.read(index)
        if example is not None:
            return index, example
        s, _ = self._locate(index)
        start, size = self.starts[s], self.sizes[s]
        begin = random.Random(f"replace:{index}").randrange(size)
        for step in range(size):
            other = start + (begin + step) % size
            if other % world == rank and other not in taken and (example := self.read(other)) is not None:
                return other, example
        # none this process may take: is any example of the source good at all?
        if all(self.read(other) is None for other in range(start, start + size)):
            bad = [error for i, error in self.bad.items() if start <= i < start + size]
            raise NoUsableExamples(f"{self.sources[s].path}: no usable training example ({size} bad; first: "
                                   f"{bad[0].reason})")
        return None  # every good example this process may take is in the batch already

    def error_state(self) -> list[dict[str, Any]]:
        """The bad examples found so far, for a checkpoint (:meth:`restore_errors` reads it back)."""
        return [{"index": index, **error.to_dict()} for index, error in self.bad.items()]

    def restore_errors(self, state: list[dict[str, Any]]) -> None:
        """The bad examples a resumed run had found: excluded from draws as they were, not reported again."""
        for entry in state:
            index = int(entry["index"])
            s, local = self._locate(index)
            self._verdicts[s][local] = _BAD
            self.bad.setdefault(index, ItemError(entry["id"], entry["error"], line=entry["line"]))


def example_error(example: Example, exc: ItemError) -> ItemError:
    """``exc`` (one of the example's items) as the example's error, with its file and line."""
    return ItemError(exc.item_id, f"{example.where}: {exc.reason}", line=example.line)


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
