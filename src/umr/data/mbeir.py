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
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Iterable, Literal

from .files import read_jsonl_records, require_strings, resolve_path
from .qrels import read_qrels
from .tasks import RetrievalTask, category_of
from ..types import Item, Modality
from ..uniir import format_string as format_instruction  # UniIR's prompt clean-up

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


def candidate_ids(record: dict, field: str) -> list[str]:
    """A query record's ``pos_cand_list`` / ``neg_cand_list`` as id strings (absent: none)."""
    value = record.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(d, (str, int)) for d in value):
        raise ValueError(f"{field!r} must be a list of candidate ids")
    return [str(d) for d in value]


def pick_instruction(prompts: list[str], *, qid: str, policy: InstructionPolicy, seed: int) -> str | None:
    if policy == "none" or not prompts:
        return None
    if policy == "first":
        return format_instruction(prompts[0])
    return format_instruction(random.Random(f"{seed}:{qid}").choice(prompts))




def pool_item(record: Any, root: str | Path) -> Item:
    """One candidate record of an M-BEIR pool file (text/image kept according to its
    ``modality``); a record that is not one raises ``ValueError`` saying why."""
    if not isinstance(record, dict) or not isinstance(record.get("did"), (str, int)):
        raise ValueError("a pool record needs a 'did' (string or number)")
    require_strings(record, "txt", "img_path", "modality")
    modality = Modality.parse(record.get("modality") or ("image" if record.get("img_path") else "text"))
    text = record.get("txt") if modality in (Modality.TEXT, Modality.FUSED) else None
    image = resolve_path(Path(root), record.get("img_path")) if modality in (Modality.IMAGE, Modality.FUSED) else None
    return Item.candidate(text=text if text is not None or image is not None else "", image=image,
                          id=str(record["did"]))


def read_pool(path: str | Path, root: str | Path) -> list[Item]:
    """Candidates of an M-BEIR pool file (:func:`pool_item` of each record)."""
    return [pool_item(record, root) for record in read_jsonl_records(Path(path))]


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

    def query_item(self, name: str, record: Any, *, candidate_modality: str | None,
                   instruction_policy: InstructionPolicy = "random", seed: int = 0) -> Item:
        """One query record of task ``name``: text and image as its ``query_modality`` says, and
        UniIR's instruction for (dataset, query modality, ``candidate_modality`` — its first
        positive's, else the task's). A record that is not one raises ``ValueError`` saying why,
        one with no instruction in the table ``KeyError``."""
        if not isinstance(record, dict) or not isinstance(record.get("qid"), (str, int)):
            raise ValueError("a query record needs a 'qid' (string or number)")
        require_strings(record, "query_txt", "query_img_path", "query_modality")
        qid = str(record["qid"])
        dataset, task_id = name.rsplit("_task", 1)
        query_mod, target = MBEIR_TASKS.get(int(task_id), (None, None))
        qmod = Modality.parse(record.get("query_modality") or query_mod or "text")
        text = record.get("query_txt") if qmod in (Modality.TEXT, Modality.FUSED) else None
        image = resolve_path(self.root, record.get("query_img_path")) if qmod in (Modality.IMAGE, Modality.FUSED) else None
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
        cand_modality = {c.id: str(c.modality) for c in candidates}
        query_mod, target = MBEIR_TASKS.get(task_num, (None, None))
        if instruction_policy != "none":
            self.require_instructions()

        queries: list[Item] = []
        pos_qrels: dict[str, dict[str, int]] = {}
        for record in read_jsonl_records(self.query_files[name]):
            positives = candidate_ids(record, "pos_cand_list")
            query = self.query_item(name, record, candidate_modality=cand_modality.get(positives[0]) if positives
                                    else None, instruction_policy=instruction_policy, seed=seed)
            pos_qrels[query.id] = {d: 1 for d in positives}
            queries.append(query)

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

        if target is None:
            target = queries and cand_modality.get(next(iter(qrels[queries[0].id]), ""), "text") or "text"
        query_modality = query_mod or (str(queries[0].modality) if queries else "text")
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
