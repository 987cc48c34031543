"""Fixtures of the evaluation tests: a tiny M-BEIR-layout benchmark and test embedders.

The M-BEIR fixture has three tasks laid out exactly as UniIR distributes M-BEIR:
``mscoco_task0`` (text -> image), ``oven_task6`` (image,text -> text) and ``nights_task4``
(image -> image), each with a local pool, a global union pool, qrels, instructions and images.
Every query and its positive share a *concept* number, written into texts ("concept 07") and
image file names (``c07_*.png``), so a test embedder can read it back.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import umr.cli.eval as cli_eval_module
from umr.cli import main
from umr.models.base import Embedder
from umr.core.items import Item, ItemError

N_CONCEPTS = 30
# task -> (dataset id, concepts, query modality, candidate modality)
TASKS = {
    "mscoco_task0": ("1", range(0, 10), "text", "image"),
    "oven_task6": ("6", range(10, 20), "image,text", "text"),
    "nights_task4": ("5", range(20, 30), "image", "image"),
}
_CONCEPT = re.compile(r"c(?:oncept )?(\d\d)")


def _image(path: Path, concept: int, variant: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(concept * 10 + variant)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    return str(path)


def build_mbeir(root: Path, *, queries_per_task: int = 6) -> Path:
    """Write the three-task M-BEIR fixture under ``root`` and return it."""
    for sub in ("query/test", "cand_pool/local", "cand_pool/global", "qrels/test", "instructions"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    union = []
    instructions = ["query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4"]
    for name, (ds_id, concepts, qmod, cmod) in TASKS.items():
        dataset = name.split("_task")[0]
        task_id = name.rsplit("task", 1)[1]
        instructions.append(f"{qmod}\t{cmod}\t{dataset}\t{ds_id}\tfind the {cmod} for this {qmod}\t"
                            f"retrieve a matching {cmod}\t\t")
        pool = []
        for c in concepts:
            did = f"{ds_id}:{1000 + c}"
            rel = f"mbeir_images/{dataset}/cand_c{c:02d}.png"
            if "image" in cmod:
                _image(root / rel, c, 1)
            pool.append({"txt": f"a text about concept {c:02d}" if "text" in cmod else "",
                         "img_path": rel if "image" in cmod else None, "modality": cmod, "did": did,
                         "src_content": None})
        union += pool
        with (root / f"cand_pool/local/mbeir_{name}_cand_pool.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in pool)
        qrels = []
        with (root / f"query/test/mbeir_{name}_test.jsonl").open("w") as f:
            for i, c in enumerate(list(concepts)[:queries_per_task]):
                qid = f"{ds_id}:{i}"
                rel = f"mbeir_images/{dataset}/query_c{c:02d}.png"
                if "image" in qmod:
                    _image(root / rel, c, 2)
                record = {"qid": qid, "query_txt": f"show me concept {c:02d}" if "text" in qmod else "",
                          "query_img_path": rel if "image" in qmod else None, "query_modality": qmod,
                          "query_src_content": None, "pos_cand_list": [f"{ds_id}:{1000 + c}"],
                          "neg_cand_list": [], "task_id": int(task_id)}
                f.write(json.dumps(record) + "\n")
                qrels.append(f"{qid} 0 {ds_id}:{1000 + c} 1 {task_id}")
        (root / f"qrels/test/mbeir_{name}_test_qrels.txt").write_text("\n".join(qrels) + "\n")
    with (root / "cand_pool/global/mbeir_union_test_cand_pool.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in union)
    (root / "instructions/query_instructions.tsv").write_text("\n".join(instructions) + "\n")
    return root


@pytest.fixture(scope="session")
def mbeir_dir(tmp_path_factory) -> Path:
    return build_mbeir(tmp_path_factory.mktemp("mbeir") / "M-BEIR")


def concept_of(item: Item) -> int:
    for source in (item.text, Path(str(item.image)).name if item.image is not None else None):
        if source:
            match = _CONCEPT.search(source)
            if match:
                return int(match.group(1))
    raise ItemError(item.id, "no concept in this item")


class OracleEmbedder(Embedder):
    """Embeds the concept: a query and its positive get the same vector."""

    name = "oracle"
    dim = N_CONCEPTS + 2

    def __init__(self):
        self.calls = 0

    def _cost(self, item: Item) -> int:
        return 1

    def _vector(self, item: Item) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        v[concept_of(item)] = 1.0
        return v

    def _embed_batch(self, items):
        self.calls += len(items)
        return np.stack([self._vector(i) for i in items])


class TextLovingEmbedder(OracleEmbedder):
    """Knows the concept but prefers anything with text: queries and texts share a strong axis."""

    name = "text-lover"

    def _vector(self, item: Item) -> np.ndarray:
        v = super()._vector(item)
        if item.is_query or item.text:
            v[N_CONCEPTS] = 2.0
        return v


@pytest.fixture
def oracle():
    return OracleEmbedder()


@pytest.fixture
def text_lover():
    return TextLovingEmbedder()


@pytest.fixture(scope="session")
def stdlib_docs() -> dict:
    """The bundled real text collection, parsed without umr (for independent references)."""
    folder = Path(__file__).parents[1] / "fixtures" / "eval" / "stdlib-docs"
    read = lambda name: [json.loads(line) for line in (folder / name).read_text().splitlines() if line.strip()]
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, grade = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(grade)
    return {"folder": folder, "corpus": read("corpus.jsonl"), "queries": read("queries.jsonl"), "qrels": qrels}


# -- a bag-of-words embedder and BEIR folders (the evaluator, bad records) -------------------------

class Words(Embedder):
    """Bag of hashed words (64-d). An image is embedded from its file's bytes (a missing or
    unreadable file is that item's error); items whose text holds a word in ``refuse`` fail."""

    dim = 64
    batch_size = 4

    def __init__(self, name: str = "words", refuse: tuple[str, ...] = ()):
        self.name = name
        self.refuse = set(refuse)
        self.calls = 0
        self.seen: list[str] = []

    def _cost(self, item: Item) -> int:
        if self.refuse & set((item.text or "").split()):
            raise ItemError(item.id, "refused word")
        if item.image is not None and not Path(str(item.image)).is_file():
            raise ItemError(item.id, f"no such image file: {item.image}")
        return 1

    def _embed_batch(self, items):
        self.calls += len(items)
        self.seen += [item.id for item in items]
        out = np.zeros((len(items), self.dim), np.float32)
        for row, item in enumerate(items):
            words = (item.text or "").split()
            if item.image is not None:
                words.append(hashlib.md5(Path(str(item.image)).read_bytes()).hexdigest())
            for word in words:
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            out[row] += 1e-3  # no all-zero vector
        return out


def write_beir(folder: Path, corpus, queries, qrels, meta=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    if meta is not None:
        (folder / "task.json").write_text(json.dumps(meta))
    return folder


def cli_eval(monkeypatch, model: Words, data: Path, output: Path, *extra: str) -> int:
    """``umr eval`` on a BEIR folder with ``model`` in place of the loaded one."""
    monkeypatch.setattr(cli_eval_module, "load_model_from_args", lambda args: model)
    return main(["eval", "--model", model.name, "--benchmark", "beir", "--data", str(data),
                 "--output", str(output), "--no-progress", *extra])


def word_items(n: int) -> list[Item]:
    return [Item.candidate(text=f"word{i} other{i % 7}", id=f"d{i}") for i in range(n)]
