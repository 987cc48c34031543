"""Training data: the generic JSONL, M-BEIR training files, mixtures and batch plans; bad records
found when a batch draws them (file, line, reason), reported once, their places taken by good ones."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from umr.train.data import (BatchPlan, MBEIRExamples, NoUsableExamples, TrainingData, read_examples_jsonl,
                            read_mbeir_train, sample_negatives)
from umr.core.items import ItemError

from train_fixtures import mbeir_with_bad_records, write_examples, write_jsonl


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
    data = TrainingData([{"path": str(path), "instruction": "Given a question, find the answer.",
                          "name": "qa", "weight": 2}])
    examples = [example for _, example in data.draw([0, 1])]
    assert [e.query.instruction for e in examples] == ["Given a question, find the answer.", "own"]
    assert {e.source for e in examples} == {"qa"} and data.weights == [2.0]


def test_mbeir_training_files(tmp_path):
    root = tmp_path / "M-BEIR"
    (root / "mbeir_images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "mbeir_images" / "a.jpg")
    write_jsonl(root / "query/train/mbeir_mscoco_task0_train.jsonl", [
        {"qid": "9:1", "query_txt": "a dog", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["9:10"], "neg_cand_list": ["9:11", "9:12"], "task_id": 0},
        {"qid": "9:2", "query_txt": "a cat", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["9:99"], "neg_cand_list": [], "task_id": 0},
        {"qid": "9:3", "query_txt": "a bird", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["9:11"], "neg_cand_list": [], "task_id": 0}])
    write_jsonl(root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl", [
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
    import umr

    Image.new("RGB", (8, 8)).save(tmp_path / "red.png")
    path = write_examples(tmp_path / "t.jsonl", [
        {"query": {"text": "a"}, "positive": {"text": "b"}},
        {"query": {"text": "c"}, "positive": {"image": "red.png", "id": "img"}},
        {"query": {"text": "e"}, "positive": {"text": "f"}}])
    data = TrainingData([str(path)], check=umr.load_model(tiny_text_dir).check)
    assert [(i, e.query.text) for i, e in data.draw([0, 1])] == [(0, "a"), (2, "e")]  # 1 bad: 2 takes its place
    (error,) = data.errors
    assert error.line == 2 and error.item_id == "img" and f"{path}:2" in error.reason
    assert "cannot embed an image" in error.reason


# -- lazy validation: bad records as they really come --------------------------------------------------

GOOD = [{"query": {"text": f"question {i}"}, "positive": {"text": f"answer {i}", "id": f"d{i}"}} for i in range(6)]
#: (line, record as written, what the error must say); each is a mistake seen in real files
BAD = [
    ('{"query": {"text": "unterminated"}, "positive": {"text": "x"}', "Expecting"),
    (json.dumps({"query": {"text": "  "}, "positive": {"text": "x"}}), "query has neither text nor image"),
    (json.dumps({"query": {"text": "q", "image": None}, "positive": {"text": "", "image": ""}}),
     "positive has neither text nor image"),
    (json.dumps({"query": {"text": "q"}, "positive": {"image": "img/gone.jpg"}}), "gone.jpg"),
    (json.dumps({"query": {"text": 42}, "positive": {"text": "x"}}), "query: field 'text' must be a string or null, got int"),
    (json.dumps({"query": {"text": "q"}, "positive": {"image": ["a.png"]}}), "positive: field 'image' must be a string"),
    (json.dumps({"query": {"text": "q", "id": {"n": 1}}, "positive": {"text": "x"}}), "query: field 'id' (its id) must be a string or a number"),
    (json.dumps({"query": {"text": "q"}, "positive": {"text": "x"}, "negatives": "n1"}), "'negatives' must be a list"),
    (json.dumps({"query": {"text": "q"}, "positive": {"text": "x"}, "negatives": [None]}), "negatives[0] must be an object"),
    (json.dumps({"query": {"text": "q"}, "positive": {"text": "x"}, "source": 7}), "'source' must be a string"),
    (json.dumps(["query", "positive"]), "expected a JSON object, got list"),
    (json.dumps({"query": {"text": "q"}}), "no 'positive'"),
]


def _mixed_file(tmp_path):
    """Good and bad examples interleaved: good on odd lines 1, 3, ...; bad ones between them."""
    lines, expected = [], {}
    bad = iter(BAD)
    for good in GOOD:
        lines.append(json.dumps(good))
        for _ in range(2):
            record, says = next(bad)
            lines.append(record)
            expected[len(lines)] = says
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, expected


def test_start_up_parses_nothing_and_counts_every_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text("{not json\n\n" * 500)  # blank lines are not examples
    data = TrainingData([str(path)])
    assert len(data) == 500 and data.sizes == [500] and data.errors == []  # nothing read yet


def test_each_bad_record_is_its_error_with_file_line_and_reason_and_good_ones_take_its_place(tmp_path):
    path, expected = _mixed_file(tmp_path)
    data = TrainingData([str(path)])
    batch = [1, 2, 3, 4]  # example indices: 0 and 3 are good, 1 and 2 bad (lines 2 and 3)
    drawn = data.draw(batch)
    assert len(drawn) == 4 and len({i for i, _ in drawn}) == 4
    assert [i for i, _ in drawn][2] == 3 and all(e.query.text.startswith("question") for _, e in drawn)
    # the two drawn, and any passed over while looking for good ones to take their places
    assert {2, 3} <= {e.line for e in data.errors} <= expected.keys()
    # a fresh run over the same data draws the same replacements (resume is exact)
    assert [i for i, _ in TrainingData([str(path)]).draw(batch)] == [i for i, _ in drawn]
    # every bad record, once, with its file, line and reason
    every = data.draw(list(range(len(data))))
    assert sorted(e.line for e in data.errors) == sorted(expected)
    for error in data.errors:
        assert error.reason.startswith(f"{path}:{error.line}: ") and expected[error.line] in error.reason, error
    assert len(every) == len(GOOD)  # the good ones, each once (no good one left to stand in for the bad)
    data.draw(list(range(len(data))))
    assert len(data.errors) == len(BAD)  # reported once however often drawn


def test_processes_draw_disjoint_equal_shares_around_bad_examples(tmp_path):
    path, _ = _mixed_file(tmp_path)
    batch = [0, 1, 2, 3, 4, 5]  # two good (0, 3), four bad
    shares = [TrainingData([str(path)]).draw(batch, rank=rank, world=2) for rank in range(2)]
    assert [len(s) for s in shares] == [3, 3]
    indices = [i for share in shares for i, _ in share]
    assert len(set(indices)) == 6  # no example twice in the global batch


def test_a_source_with_no_usable_example_stops_the_run_saying_why(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps({"query": {"text": "q"}, "positive": {"image": f"missing{i}.png"}}) + "\n"
                            for i in range(5)))
    data = TrainingData([str(path)])
    with pytest.raises(NoUsableExamples, match=r"no usable training example \(5 bad; first: .*missing"):
        data.draw([0, 1])


def test_an_example_rejected_after_it_was_drawn_is_never_drawn_again(tmp_path):
    """The trainer rejects an example whose item fails to prepare (found after the draw)."""
    path = write_examples(tmp_path / "t.jsonl", GOOD[:4])
    data = TrainingData([str(path)])
    assert [i for i, _ in data.draw([0, 1, 2])] == [0, 1, 2]
    broken = ItemError("d1", f"{path}:2: image cannot be decoded", line=2)
    data.reject(1, broken)
    data.reject(1, broken)  # found again (a micro-batch prepared ahead): still one error
    drawn = [i for i, _ in data.draw([0, 1, 2])]
    assert 1 not in drawn and len(drawn) == 3 and data.errors == [broken]
    for index in (0, 2, 3):
        data.reject(index, ItemError(None, f"{path}:{index + 1}: image cannot be decoded", line=index + 1))
    with pytest.raises(NoUsableExamples, match=r"4 bad; first: .*:2: image cannot be decoded"):
        data.draw([0, 1])


def test_errors_found_before_a_checkpoint_are_kept_once_after_resume(tmp_path):
    path, _ = _mixed_file(tmp_path)
    first = TrainingData([str(path)])
    first.draw([1, 2])
    state = first.error_state()
    resumed = TrainingData([str(path)])
    resumed.restore_errors(state)
    resumed.draw([1, 2, 4])  # 1 and 2 found again: not listed twice
    assert [e.reason for e in resumed.errors][: len(state)] == [e["error"] for e in state]
    assert len(resumed.errors) == len({e.reason for e in resumed.errors})


def test_training_reports_bad_examples_in_errors_jsonl_and_finishes(tiny_text_dir, tmp_path):
    from umr.train import TrainConfig, train

    path, expected = _mixed_file(tmp_path)
    out = train(TrainConfig(model=str(tiny_text_dir), data=[str(path)], output=str(tmp_path / "out"), batch_size=4,
                            max_steps=3, progress=False))
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert errors and all(e["error"].startswith(f"{path}:{e['line']}: ") for e in errors)
    assert all(expected[e["line"]] in e["error"] for e in errors)
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 3 and record["skipped_examples"] == len(errors)


# -- M-BEIR: the one reader of train and mine --------------------------------------------------------


def test_mbeir_bad_records_are_errors_with_file_line_and_reason(tmp_path):
    root = tmp_path / "M-BEIR"
    expected = mbeir_with_bad_records(root)
    examples, errors = read_mbeir_train(root)
    assert [e.query.id for e in examples] == ["9:1", "9:14"]
    assert examples[0].negatives[0].id == "9:11" and examples[0].query.instruction == "Find a picture and its caption."
    query_file = root / "query/train/mbeir_mscoco_task2_train.jsonl"
    assert {e.line: e for e in errors}.keys() == expected.keys()
    for error in errors:
        assert error.reason.startswith(f"{query_file}:{error.line}: ") and expected[error.line] in error.reason, error


def test_mbeir_source_instruction_replaces_uniir_s(tmp_path):
    root = tmp_path / "M-BEIR"
    mbeir_with_bad_records(root)
    (root / "instructions/query_instructions.tsv").unlink()  # not needed with an instruction of one's own
    reader = MBEIRExamples(root, instruction="Retrieve it.")
    assert reader.read(0).query.instruction == "Retrieve it."
    with pytest.raises(ItemError, match="no positive"):
        reader.read(4)
    with pytest.raises(FileNotFoundError, match="query_instructions.tsv"):
        MBEIRExamples(root)
