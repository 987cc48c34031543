"""Evaluation with video (issue 25, item 4): BEIR-style folders take a ``video`` field, the
categories T→V, V→T and V→V form the "video" group, and the modality-bias diagnostic counts
video as its own modality."""

from __future__ import annotations

import json

import pytest

import umr
from umr.core.items import Modality
from umr.data.beir import load_beir_task
from umr.data.tasks import UMRB_GROUPS, category_of, parse_category, target_of_category
from umr.eval import evaluate
from umr.testing import write_test_clip, write_tiny_qwen3vl

pytest.importorskip("av")


def test_video_categories():
    assert UMRB_GROUPS["video"] == ["T→V", "V→T", "V→V"]
    assert category_of("text", "video") == "T→V" and category_of(Modality.VIDEO, "text") == "V→T"
    assert parse_category("t2v") == "T→V" and parse_category("v->v") == "V→V"
    assert target_of_category("V→T") is Modality.TEXT and target_of_category("T→V") is Modality.VIDEO
    assert parse_category("t2vd") == "T→VD"  # visual documents stay what they were


def _task(folder, *, queries_are_videos: bool):
    (folder / "qrels").mkdir(parents=True)
    corpus = []
    for i in range(3):
        write_test_clip(folder / f"clip{i}.mp4", 8, scene_seconds=1 + i)
        corpus.append({"_id": f"v{i}", "video": f"clip{i}.mp4"})
    corpus.append({"_id": "n0", "text": "a note about the weather"})
    corpus.append({"_id": "bad", "video": 7})  # a field of the wrong type: a named failure
    queries = [{"_id": f"q{i}", **({"video": f"clip{i}.mp4"} if queries_are_videos else {"text": f"clip {i}"})}
               for i in range(3)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                               + "".join(f"q{i}\tv{i}\t1\n" for i in range(3)))
    return load_beir_task(folder)


def test_beir_folders_with_video_score_by_category_group_and_bias(tmp_path):
    t2v = _task(tmp_path / "t2v", queries_are_videos=False)
    v2v = _task(tmp_path / "v2v", queries_are_videos=True)
    assert (t2v.category, t2v.target_modality, v2v.category) == ("T→V", Modality.VIDEO, "V→V")
    assert str(t2v.candidates[0].video).endswith("clip0.mp4")
    model = umr.load_model(write_tiny_qwen3vl(tmp_path / "tiny", seed=0), fps=0.5, max_frames=4)
    scores = evaluate(model, [t2v, v2v], output=tmp_path / "out")
    by_name = {t["task"]: t for t in scores["tasks"]}
    # a video query finds its own clip first: the same input gives the same vector
    assert by_name["v2v"]["metrics"]["ndcg@10"] == pytest.approx(1.0)
    assert by_name["v2v"]["failures"]["candidates"] == by_name["t2v"]["failures"]["candidates"] == 1
    shares = by_name["t2v"]["modality_bias"]["shares"]
    assert set(shares) <= {"video", "text"} and "video" in shares
    group = scores["averages"]["corpus"]["by_group"]["video"]
    assert group["n_tasks"] == 2
    assert "| video | T→V |" in (tmp_path / "out" / "results.md").read_text()


def test_models_that_cannot_see_video_fail_the_video_items_and_score_the_rest(tmp_path):
    task = _task(tmp_path / "t2v", queries_are_videos=False)
    result = evaluate(umr.load_model("minilm"), [task])["tasks"][0]
    assert result["failures"]["candidates"] == 4  # three videos and the bad record
    assert any("cannot embed video" in r["error"] for r in result["failures"]["first"])
