"""Training data: the generic JSONL, M-BEIR training files, mixtures and batch plans."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from umr.train.data import BatchPlan, Source, load_source, read_examples_jsonl, read_mbeir_train, sample_negatives

from train_fixtures import write_examples


def test_generic_jsonl_with_images_negatives_and_bad_lines(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "img" / "red.png")
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([
        json.dumps({"query": {"text": "a red square", "instruction": "Find the image."},
                    "positive": {"image": "img/red.png", "id": "p1"},
                    "negatives": [{"id": "n1", "text": "blue", "rank": 3, "modality": "text", "kind": "wrong_modality"}],
                    "source": "t2i"}),
        "",
        "{not json",
        json.dumps({"query": {"text": "   "}, "positive": {"text": "x"}}),
        json.dumps({"query": {"text": "q"}, "positive": {"image": "img/missing.png"}}),
        json.dumps({"id": "e5", "query": {"text": "q"}}),
        json.dumps({"query": {"text": "fine"}, "positive": {"text": "ok"}}),
    ]) + "\n")
    examples, errors = read_examples_jsonl(path)
    assert len(examples) == 2
    first = examples[0]
    assert first.query.is_query and first.query.instruction == "Find the image." and first.source == "t2i"
    assert Path(first.positive.image) == tmp_path / "img" / "red.png" and first.positive.id == "p1"
    assert first.negatives[0].id == "n1" and first.negatives[0].metadata == {"rank": 3, "modality": "text",
                                                                              "kind": "wrong_modality"}
    assert [e.line for e in errors] == [3, 4, 5, 6]
    assert all(str(path) in e.reason for e in errors)
    assert "neither text nor image" in errors[1].reason and "no 'positive'" in errors[3].reason
    assert errors[3].item_id == "e5"


def test_source_instruction_fills_queries_without_one(tmp_path):
    path = write_examples(tmp_path / "t.jsonl", [
        {"query": {"text": "a"}, "positive": {"text": "b"}},
        {"query": {"text": "c", "instruction": "own"}, "positive": {"text": "d"}}])
    loaded = load_source(Source.parse({"path": str(path), "instruction": "Given a question, find the answer.",
                                       "name": "qa", "weight": 2}))
    assert [e.query.instruction for e in loaded.examples] == ["Given a question, find the answer.", "own"]
    assert {e.source for e in loaded.examples} == {"qa"}
    with pytest.raises(ValueError, match="path"):
        Source.parse({"weight": 1})


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_mbeir_training_files(tmp_path):
    root = tmp_path / "M-BEIR"
    (root / "mbeir_images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "mbeir_images" / "a.jpg")
    _write_jsonl(root / "query/train/mbeir_mscoco_task0_train.jsonl", [
        {"qid": "9:1", "query_txt": "a dog", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["9:10"], "neg_cand_list": ["9:11", "9:12"], "task_id": 0},
        {"qid": "9:2", "query_txt": "a cat", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["9:99"], "neg_cand_list": [], "task_id": 0},
        {"qid": "9:3", "query_txt": "a bird", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["9:11"], "neg_cand_list": [], "task_id": 0}])
    _write_jsonl(root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl", [
        {"did": f"9:{d}", "txt": None, "img_path": "mbeir_images/a.jpg", "modality": "image"} for d in (10, 11, 12)])
    (root / "instructions").mkdir()
    (root / "instructions/query_instructions.tsv").write_text(
        "query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n"
        "text\timage\tMSCOCO\t9\tidentify the image showcasing the given caption\t\t\t\n")
    examples, errors = read_mbeir_train(root)
    assert [e.query.id for e in examples] == ["9:1", "9:3"]
    first = examples[0]
    assert first.query.instruction == "Identify the image showcasing the given caption."
    assert first.positive.id == "9:10" and [n.id for n in first.negatives] == ["9:11", "9:12"]
    assert first.source == "mscoco_task0" and first.positive.image is not None
    assert len(errors) == 1 and errors[0].item_id == "9:2" and "9:99" in errors[0].reason and errors[0].line == 2


def test_batch_plan_weights_homogeneous_and_mixed():
    plan = BatchPlan([8, 4], [1.0, 2.0], global_batch=4, seed=3)
    batches = plan.epoch(0)
    drawn = Counter(i < 8 for b in batches for i in b)
    assert drawn == {True: 8, False: 8}  # the second source (weight 2) is drawn twice over
    assert all(len({i < 8 for i in b}) == 1 for b in batches)  # one source per batch
    assert plan.epoch(0) == batches and plan.epoch(1) != batches
    mixed = BatchPlan([8, 4], [1.0, 2.0], global_batch=4, seed=3, batching="mixed").epoch(0)
    assert any(len({i < 8 for i in b}) == 2 for b in mixed)
    short = BatchPlan([5], [1.0], global_batch=2, seed=0, keep_short=False).epoch(0)
    assert [len(b) for b in short] == [2, 2]
    assert sorted(len(b) for b in BatchPlan([5], [1.0], global_batch=2, seed=0).epoch(0)) == [1, 2, 2]


def test_hard_negatives_are_sampled_per_epoch_and_seeded(tmp_path):
    path = write_examples(tmp_path / "t.jsonl", [
        {"query": {"text": "q"}, "positive": {"text": "p"}, "negatives": [{"text": f"n{i}"} for i in range(10)]}])
    example = read_examples_jsonl(path)[0][0]
    picks = [[n.text for n in sample_negatives(example, 3, seed=0, epoch=e, index=0)] for e in range(4)]
    assert all(len(p) == 3 and len(set(p)) == 3 for p in picks)
    assert len({tuple(p) for p in picks}) > 1
    assert picks[0] == [n.text for n in sample_negatives(example, 3, seed=0, epoch=0, index=0)]
    assert len(sample_negatives(example, 20, seed=0, epoch=0, index=0)) == 10
    assert sample_negatives(example, 0, seed=0, epoch=0, index=0) == []


def test_examples_the_model_cannot_embed_are_skipped_with_file_and_line(tiny_text_dir, tmp_path):
    from umr.train import TrainConfig
    from umr.train.trainer import Trainer

    Image.new("RGB", (8, 8)).save(tmp_path / "red.png")
    path = write_examples(tmp_path / "t.jsonl", [
        {"query": {"text": "a"}, "positive": {"text": "b"}},
        {"query": {"text": "c"}, "positive": {"image": "red.png", "id": "img"}},
        {"query": {"text": "e"}, "positive": {"text": "f"}}])
    trainer = Trainer(TrainConfig(model=str(tiny_text_dir), data=[str(path)], output=str(tmp_path / "o"),
                                  batch_size=2, progress=False))
    assert [e.query.text for e in trainer.examples] == ["a", "e"]
    (error,) = trainer.errors
    assert error.line == 2 and error.item_id == "img" and f"{path}:2" in error.reason
    assert "cannot embed an image" in error.reason
