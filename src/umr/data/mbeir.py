"""M-BEIR as UniIR distributes it, read into :class:`~umr.data.tasks.RetrievalTask` objects.

Layout under the data folder (``DIR``)::

    query/{split}/mbeir_{dataset}_task{N}_{split}.jsonl     qid, query_txt, query_img_path,
                                                            query_modality, pos_cand_list, ...
    cand_pool/local/mbeir_{dataset}_task{N}_cand_pool.jsonl  did, txt, img_path, modality
    cand_pool/global/mbeir_union_{split}_cand_pool.jsonl     the union pool
    qrels/{split}/mbeir_{dataset}_task{N}_{split}_qrels.txt  "qid 0 did rel task_id"
    instructions/query_instructions.tsv                      query_modality, cand_modality,
                                                             dataset_name, dataset_id, prompt_1..4
    mbeir_images/...                                         image paths are relative to DIR

Query instructions are chosen as UniIR does: the prompts of the key (dataset id = the part of the
qid before ``:``, the query modality, the modality of the query's first positive candidate) and
one of them at random, cleaned like UniIR's ``format_string`` (stripped, first letter upper-cased,
a final period added). umr draws with ``random.Random(f"{seed}:{qid}")``, so each query's choice
depends only on the seed and its qid: reproducible, and independent of task order or subsets.
``instruction_policy="first"`` always takes prompt_1; ``"none"`` embeds queries bare.

Qrels come from the qrels file when present (lines with relevance > 0, as UniIR's ``load_qrel``),
else from each query's ``pos_cand_list``. Recall@k's k is UniIR's: 10 for Fashion200K and
FashionIQ, 5 for everything else. Means are UniIR's: over every query of the query file (one
without a positive, or that could not be embedded, scores 0); qrels lines for queries the file
does not hold are ignored, and no result is dropped for sharing the query's id.

A bad record in a pool or a query file (no text and no image for its modality, a field of the
wrong type, an unknown modality, no ``did``/``qid``, a line that is not JSON) is kept as a failed
item (:meth:`~umr.core.items.Item.failed`): counted and named by the evaluator, and a failed query
scores 0 like any other. A record without an id is named ``FILE:LINE``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Iterable, Literal

from .files import image_field, jsonl_records, read_item, record_id, string_field
from .qrels import read_qrels
from .tasks import RetrievalTask, category_of
from ..core.items import IMAGE_TEXT_MODALITIES, Item, ItemError, Modality
from ..core.uniir import format_string as format_instruction  # UniIR's prompt clean-up

#: M-BEIR's task ids: (query modality, candidate modality)
MBEIR_TASKS: dict[int, tuple[str, str]] = {
    0: ("text", "image"), 1: ("text", "text"), 2: ("text", "image,text"),
    3: ("image", "text"), 4: ("image", "image"), 5: ("image", "image,text"),
    6: ("image,text", "text"), 7: ("image,text", "image"), 8: ("image,text", "image,text"),
}
#: datasets whose headline metric is Recall@10 (all others: Recall@5), as in UniIR
RECALL_AT_10 = {"fashion200k", "fashioniq"}
#: the UniIR paper's spelling of each dataset
DISPLAY_NAMES = {"visualnews": "VisualNews", "mscoco": "MSCOCO", "fashion200k": "Fashion200K",
                 "webqa": "WebQA", "edis": "EDIS", "nights": "NIGHTS", "oven": "OVEN",
                 "infoseek": "InfoSeek", "fashioniq": "FashionIQ", "cirr": "CIRR"}

_QUERY_FILE = re.compile(r"^mbeir_(?P<dataset>.+)_task(?P<task>\d+)_(?P<split>[a-z]+)\.jsonl$")

InstructionPolicy = Literal["random", "first", "none"]


def read_instructions(path: str | Path) -> dict[tuple[str, str, str], list[str]]:
    """``{(dataset_id, query_modality, cand_modality): [prompt, ...]}``; dataset names also key."""
    table: dict[tuple[str, str, str], list[str]] = {}
    with Path(path).open(encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    for line in lines[1:]:  # header
        parts = line.strip().split("\t")
        if len(parts) < 5:
            continue
        prompts = [p for p in parts[4:] if p.strip()]
        qmod, cmod = str(Modality.parse(parts[0])), str(Modality.parse(parts[1]))
        table[(parts[3].strip(), qmod, cmod)] = prompts
        table[(parts[2].strip().lower(), qmod, cmod)] = prompts
    return table


def candidate_ids(record: dict, field: str, item_id: str | None) -> list[str]:
    """A query record's ``pos_cand_list`` / ``neg_cand_list`` as id strings (absent: none); an
    :class:`ItemError` for a value that is not a list of ids."""
    value = record.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ItemError(item_id, f"field {field!r} must be a list of candidate ids, got {type(value).__name__}")
    for did in value:
        if isinstance(did, bool) or not isinstance(did, (str, int, float)):  # ids as record_id takes them
            raise ItemError(item_id, f"field {field!r} must be a list of candidate ids, holds a "
                                     f"{type(did).__name__}")
    return [str(did) for did in value]


def pick_instruction(prompts: list[str], *, qid: str, policy: InstructionPolicy, seed: int) -> str | None:
    if policy == "none" or not prompts:
        return None
    if policy == "first":
        return format_instruction(prompts[0])
    return format_instruction(random.Random(f"{seed}:{qid}").choice(prompts))




def _modality(record: dict, field: str, item_id: str, default: str) -> Modality:
    value = record.get(field)
    if value is None or value == "":
        return Modality.parse(default)
    if not isinstance(value, str):
        raise ItemError(item_id, f"field {field!r} must be a modality (text, image or image,text), "
                                 f"got {type(value).__name__}")
    try:
        return Modality.parse(value, among=IMAGE_TEXT_MODALITIES)
    except ValueError as exc:
        raise ItemError(item_id, f"field {field!r}: {exc}") from None


def _content(record: dict, modality: Modality, text_field: str, image_field_: str, item_id: str,
             root: Path) -> tuple[str | None, str | None]:
    """The text and image the record's modality keeps (a stray caption of an image is dropped,
    unread: only the fields kept must have the right type)."""
    text = string_field(record, text_field, item_id) if modality in (Modality.TEXT, Modality.FUSED) else None
    image = image_field(record, image_field_, item_id, root) if modality in (Modality.IMAGE, Modality.FUSED) else None
    return text, image


def parse_candidate(record: dict, root: Path) -> Item:
    """One pool record (``did``, ``txt``, ``img_path``, ``modality``) as a candidate: what its
    ``modality`` names is kept (without one, whatever it has); ``img_path`` is under ``root``.
    An :class:`ItemError` for a bad field; a record with nothing of its modality is an item
    without content (its :attr:`~umr.core.items.Item.problem` says so)."""
    did = record_id(record, "did")
    present = ",".join(name for name, field in (("image", "img_path"), ("text", "txt")) if record.get(field))
    modality = _modality(record, "modality", did, present or "text")
    text, image = _content(record, modality, "txt", "img_path", did, root)
    return Item.candidate(text=text, image=image, id=did)


def read_pool(path: str | Path, root: str | Path) -> list[Item]:
    """Candidates of an M-BEIR pool file, a bad record kept as a failed item in its place."""
    path, root = Path(path), Path(root)
    return [read_item(lambda r: parse_candidate(r, root), record, where=path.name, line=line, is_query=False)
            for line, record in jsonl_records(path)]


class MBEIR:
    """An M-BEIR folder: lists its tasks and builds them for a split and a pool."""

    def __init__(self, root: str | Path, *, split: str = "test"):
        self.root = Path(root)
        self.split = split
        query_dir = self.root / "query" / split
        if not query_dir.is_dir():
            raise FileNotFoundError(f"{self.root}: not an M-BEIR folder (no query/{split}/)")
        self.query_files: dict[str, Path] = {}
        for path in sorted(query_dir.glob("mbeir_*.jsonl")):
            match = _QUERY_FILE.match(path.name)
            if match and match["split"] == split:
                self.query_files[f"{match['dataset']}_task{match['task']}"] = path
        if not self.query_files:
            raise FileNotFoundError(f"{query_dir}: no mbeir_<dataset>_task<N>_{split}.jsonl files")
        self._pools: dict[Path, list[Item]] = {}
        self._instructions = None

    @property
    def task_names(self) -> list[str]:
        return list(self.query_files)

    def pool(self, path: Path) -> list[Item]:
        if path not in self._pools:
            self._pools[path] = read_pool(path, self.root)
        return self._pools[path]

    def global_pool_path(self) -> Path:
        return self.root / "cand_pool" / "global" / f"mbeir_union_{self.split}_cand_pool.jsonl"

    def local_pool_path(self, name: str) -> Path:
        local = self.root / "cand_pool" / "local"
        for candidate in (local / f"mbeir_{name}_cand_pool.jsonl", local / f"mbeir_{name}_{self.split}_cand_pool.jsonl"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{local}: no local pool mbeir_{name}_cand_pool.jsonl")

    def instructions(self) -> dict:
        if self._instructions is None:
            path = self.root / "instructions" / "query_instructions.tsv"
            self._instructions = read_instructions(path) if path.is_file() else {}
        return self._instructions

    def require_instructions(self) -> None:
        if not (self.root / "instructions" / "query_instructions.tsv").is_file():
            raise FileNotFoundError(f"{self.root}/instructions/query_instructions.tsv is missing "
                                    "(use instruction_policy='none' to embed queries bare)")

    def query_item(self, name: str, record: dict, *, candidate_modality: str | None,
                   instruction_policy: InstructionPolicy = "random", seed: int = 0) -> Item:
        """One query record of task ``name``: text and image as its ``query_modality`` says, and
        UniIR's instruction for (dataset, query modality, ``candidate_modality`` — its first
        positive's, else the task's). An :class:`ItemError` for a bad field; ``KeyError`` when the
        instruction table has no instruction for it (the table is wrong, not the record)."""
        qid = record_id(record, "qid")
        dataset, task_id = name.rsplit("_task", 1)
        query_mod, target = MBEIR_TASKS.get(int(task_id), (None, None))
        qmod = _modality(record, "query_modality", qid, query_mod or "text")
        text, image = _content(record, qmod, "query_txt", "query_img_path", qid, self.root)
        cmod = candidate_modality or target or "text"
        instruction = None
        if instruction_policy != "none":
            key_id = qid.split(":")[0]
            table = self.instructions()
            prompts = table.get((key_id, str(qmod), cmod)) or table.get((dataset, str(qmod), cmod))
            if not prompts:
                raise KeyError(f"{name}: no query instruction for (dataset {key_id}, {qmod}, {cmod}) "
                               "in instructions/query_instructions.tsv")
            instruction = pick_instruction(prompts, qid=qid, policy=instruction_policy, seed=seed)
        return Item.query(text=text, image=image, instruction=instruction, id=qid)

    def task(self, name: str, *, pool: Literal["local", "global"] = "local",
             instruction_policy: InstructionPolicy = "random", seed: int = 0) -> RetrievalTask:
        if name not in self.query_files:
            raise KeyError(f"no M-BEIR task {name!r} for split {self.split!r}; have: {', '.join(self.task_names)}")
        dataset, task_id = name.rsplit("_task", 1)
        task_num = int(task_id)
        pool_path = self.global_pool_path() if pool == "global" else self.local_pool_path(name)
        if not pool_path.is_file():
            raise FileNotFoundError(f"no {pool} candidate pool: {pool_path}")
        candidates = self.pool(pool_path)
        cand_modality = {c.id: str(c.modality) for c in candidates if c.problem is None}
        query_mod, target = MBEIR_TASKS.get(task_num, (None, None))
        if instruction_policy != "none":
            self.require_instructions()

        queries: list[Item] = []
        pos_qrels: dict[str, dict[str, int]] = {}
        query_file = self.query_files[name]

        def parse_query(record: dict) -> Item:
            qid = record_id(record, "qid")
            positives = candidate_ids(record, "pos_cand_list", qid)
            query = self.query_item(name, record, candidate_modality=cand_modality.get(positives[0]) if positives
                                    else None, instruction_policy=instruction_policy, seed=seed)
            pos_qrels[qid] = {d: 1 for d in positives}
            return query

        for line, record in jsonl_records(query_file):
            queries.append(read_item(parse_query, record, where=query_file.name, line=line, is_query=True))

        qrels_path = self.root / "qrels" / self.split / f"mbeir_{name}_{self.split}_qrels.txt"
        task_tag = str(task_num)
        if qrels_path.is_file():
            raw, task_ids = read_qrels(qrels_path)
            qrels = {q: {d: r for d, r in judged.items() if r > 0} for q, judged in raw.items()}
            qrels = {q: j for q, j in qrels.items() if j}
            if task_ids:
                task_tag = next(iter(task_ids.values()))
        else:
            qrels = {q: j for q, j in pos_qrels.items() if j}
        # every query in the query file counts (a query without positives scores 0, as in UniIR)
        for q in queries:
            qrels.setdefault(q.id, {})

        readable = [q for q in queries if q.problem is None]  # failed queries have no modality
        if target is None:
            target = readable and cand_modality.get(next(iter(qrels[readable[0].id]), ""), "text") or "text"
        query_modality = query_mod or (str(readable[0].modality) if readable else "text")
        return RetrievalTask(
            name=name, queries=queries, candidates=candidates, qrels=qrels,
            category=category_of(query_modality, target), target_modality=Modality.parse(target),
            dataset=DISPLAY_NAMES.get(dataset, dataset), pool=pool,
            hit_k=10 if dataset.lower() in RECALL_AT_10 else 5, run_tag=task_tag, average="queries",
            metadata={"task_id": task_num, "split": self.split, "instruction_policy": instruction_policy,
                      "seed": seed, "pool_file": str(pool_path.relative_to(self.root))},
        )

    def tasks(self, names: Iterable[str] | None = None, *, pool: str = "local", **options) -> list[RetrievalTask]:
        return [self.task(n, pool=pool, **options) for n in (list(names) if names else self.task_names)]


def load_mbeir(root: str | Path, *, tasks: Iterable[str] | None = None, pool: str = "local",
               split: str = "test", instruction_policy: InstructionPolicy = "random",
               seed: int = 0) -> list[RetrievalTask]:
    """The M-BEIR tasks under ``root`` (all, or those named) for one pool (``local``/``global``)."""
    return MBEIR(root, split=split).tasks(tasks, pool=pool, instruction_policy=instruction_policy, seed=seed)
