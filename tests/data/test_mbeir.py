"""Reading M-BEIR as UniIR distributes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from umr.data.mbeir import MBEIR, format_instruction, load_mbeir, pick_instruction, read_instructions
from umr.core.items import Modality


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "M-BEIR"
    (r / "mbeir_images/fiq").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(r / "mbeir_images/fiq/a.jpg")
    write_jsonl(r / "query/test/mbeir_fashioniq_task7_test.jsonl", [
        {"qid": "8:1", "query_txt": "is red", "query_img_path": "mbeir_images/fiq/a.jpg",
         "query_modality": "image,text", "pos_cand_list": ["8:10"], "neg_cand_list": [], "task_id": 7},
        {"qid": "8:2", "query_txt": "is blue", "query_img_path": "mbeir_images/fiq/a.jpg",
         "query_modality": "image,text", "pos_cand_list": ["8:11"], "neg_cand_list": [], "task_id": 7}])
    write_jsonl(r / "query/test/mbeir_webqa_task1_test.jsonl", [
        {"qid": "3:1", "query_txt": "who?", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["3:5"], "task_id": 1}])
    write_jsonl(r / "cand_pool/local/mbeir_fashioniq_task7_cand_pool.jsonl", [
        {"did": "8:10", "txt": "", "img_path": "mbeir_images/fiq/a.jpg", "modality": "image"},
        {"did": "8:11", "txt": "ignored caption", "img_path": "mbeir_images/fiq/a.jpg", "modality": "image"}])
    write_jsonl(r / "cand_pool/local/mbeir_webqa_task1_cand_pool.jsonl", [
        {"did": "3:5", "txt": "an answer", "img_path": None, "modality": "text"}])
    write_jsonl(r / "cand_pool/global/mbeir_union_test_cand_pool.jsonl", [
        {"did": "8:10", "txt": "", "img_path": "mbeir_images/fiq/a.jpg", "modality": "image"},
        {"did": "8:11", "txt": "", "img_path": "mbeir_images/fiq/a.jpg", "modality": "image"},
        {"did": "3:5", "txt": "an answer", "img_path": None, "modality": "text"}])
    (r / "qrels/test").mkdir(parents=True)
    # graded/negative lines: UniIR keeps relevance > 0 only
    (r / "qrels/test/mbeir_fashioniq_task7_test_qrels.txt").write_text(
        "8:1 0 8:10 1 7\n8:1 0 8:11 0 7\n8:2 0 8:11 1 7\n")
    (r / "instructions").mkdir()
    (r / "instructions/query_instructions.tsv").write_text(
        "query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n"
        "image,text\timage\tFashionIQ\t8\tfind a similar garment\t\"change the item as described\"\t\t\n"
        "text\ttext\tWebQA\t3\tretrieve a passage that answers the question\t\t\t\n")
    return r


def test_tasks_pools_qrels_and_recall_k(root):
    bench = MBEIR(root)
    assert bench.task_names == ["fashioniq_task7", "webqa_task1"]
    fiq = bench.task("fashioniq_task7")
    assert fiq.category == "IT→I" and fiq.target_modality is Modality.IMAGE
    assert fiq.hit_k == 10 and fiq.dataset == "FashionIQ" and fiq.run_tag == "7"
    assert fiq.qrels == {"8:1": {"8:10": 1}, "8:2": {"8:11": 1}}
    q = fiq.queries[0]
    assert q.modality is Modality.FUSED and Path(q.image) == root / "mbeir_images/fiq/a.jpg"
    # the modality field decides: an image candidate's stray caption is dropped
    assert [c.modality for c in fiq.candidates] == [Modality.IMAGE, Modality.IMAGE]
    assert fiq.candidates[1].text is None
    web = bench.task("webqa_task1", pool="global")
    assert web.hit_k == 5 and web.category == "T→T" and len(web.candidates) == 3
    # no qrels file: positives come from pos_cand_list
    assert web.qrels == {"3:1": {"3:5": 1}}
    # the global pool is read once and shared by every task
    assert bench.task("fashioniq_task7", pool="global").candidates is web.candidates


def test_instruction_choice_follows_uniir(root):
    table = read_instructions(root / "instructions/query_instructions.tsv")
    assert table[("8", "image,text", "image")] == ["find a similar garment", '"change the item as described"']
    assert format_instruction('"change the item as described"') == "Change the item as described."
    assert format_instruction("who is it?") == "Who is it?"
    prompts = table[("8", "image,text", "image")]
    picks = {pick_instruction(prompts, qid=f"8:{i}", policy="random", seed=0) for i in range(40)}
    assert picks == {"Find a similar garment.", "Change the item as described."}
    assert pick_instruction(prompts, qid="8:1", policy="random", seed=3) == \
        pick_instruction(prompts, qid="8:1", policy="random", seed=3)
    tasks = load_mbeir(root, tasks=["webqa_task1"])
    assert tasks[0].queries[0].instruction == "Retrieve a passage that answers the question."


def test_errors_name_what_is_missing(root):
    with pytest.raises(KeyError, match="no M-BEIR task 'nope'"):
        MBEIR(root).task("nope")
    (root / "instructions/query_instructions.tsv").write_text("header\n")
    with pytest.raises(KeyError, match="no query instruction"):
        MBEIR(root).task("webqa_task1")
    assert MBEIR(root).task("webqa_task1", instruction_policy="none").queries[0].instruction is None
    with pytest.raises(FileNotFoundError, match="not an M-BEIR folder"):
        MBEIR(root / "query")
