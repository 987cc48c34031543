"""Reading BEIR-style task folders (UMRB tasks, MTEB retrieval sets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from umr.data.beir import load_beir, load_beir_task
from umr.core.items import Modality


def make_task(folder: Path, corpus, queries, qrels, meta=None) -> Path:
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels").mkdir()
    (folder / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    if meta:
        (folder / "task.json").write_text(json.dumps(meta))
    return folder


def test_text_task_title_joined_and_queries_limited_to_qrels(tmp_path):
    folder = make_task(tmp_path / "toy", [{"_id": "d1", "title": "Llama", "text": "A camelid."},
                                          {"_id": "d2", "title": "", "text": "Untitled."}],
                       [{"_id": "q1", "text": "what is a llama"}, {"_id": "q9", "text": "not judged"}],
                       [("q1", "d1", 2), ("q1", "d2", 0)])
    task = load_beir_task(folder)
    assert [c.text for c in task.candidates] == ["Llama A camelid.", "Untitled."]
    assert [q.id for q in task.queries] == ["q1"]
    assert task.qrels == {"q1": {"d1": 2, "d2": 0}}
    assert task.category == "T→T" and task.headline == "ndcg@10" and task.group == "single-modal"


def test_image_fields_and_category_inference(tmp_path):
    folder = tmp_path / "t2i"
    make_task(folder, [{"_id": "i1", "image": "img/a.png"}, {"_id": "i2", "image": "img/b.png"}],
              [{"_id": "q1", "text": "a red square"}], [("q1", "i1", 1)])
    (folder / "img").mkdir()
    Image.new("RGB", (4, 4)).save(folder / "img/a.png")
    task = load_beir_task(folder)
    assert task.candidates[0].modality is Modality.IMAGE and Path(task.candidates[0].image) == folder / "img/a.png"
    assert task.category == "T→I" and task.target_modality is Modality.IMAGE


def test_task_json_sets_category_instruction_and_name(tmp_path):
    make_task(tmp_path / "all" / "docvqa", [{"_id": "p1", "image": "p1.png"}], [{"_id": "q1", "text": "total?"}],
              [("q1", "p1", 1)], meta={"name": "DocVQA", "category": "t2vd", "instruction": "Find the page."})
    make_task(tmp_path / "all" / "other", [{"_id": "d", "text": "x"}], [{"_id": "q", "text": "x"}], [("q", "d", 1)])
    tasks = load_beir(tmp_path / "all")
    assert [t.name for t in tasks] == ["DocVQA", "other"]
    assert tasks[0].category == "T→VD" and tasks[0].group == "cross-modal"
    assert tasks[0].queries[0].instruction == "Find the page."
    assert [t.name for t in load_beir(tmp_path / "all", tasks=["other"])] == ["other"]
    with pytest.raises(KeyError, match="no task"):
        load_beir(tmp_path / "all", tasks=["missing"])
    with pytest.raises(FileNotFoundError):
        load_beir(tmp_path / "nothing-here")


def test_readers_do_not_import_the_evaluator():
    """Layers run one way: ``umr.data`` (readers) never imports ``umr.eval``."""
    import ast

    import umr.data

    folder = Path(umr.data.__file__).parent
    offenders = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                if target.startswith("..eval") or target.startswith("umr.eval"):
                    offenders.append(f"{path.name}: from {target}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("umr.eval")]
    assert offenders == []
    # the published spellings still work and name the same objects
    from umr.data.qrels import read_qrels
    from umr.data.tasks import RetrievalTask
    from umr.eval import RetrievalTask as EvalTask
    from umr.eval.tasks import RetrievalTask as OldTask
    from umr.eval.trec import read_qrels as old_read_qrels

    assert RetrievalTask is EvalTask is OldTask and read_qrels is old_read_qrels
