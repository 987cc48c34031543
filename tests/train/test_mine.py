"""``umr mine``: the mined negatives are exactly those MM-Embed's definition selects.

The fixture's embedder has handcrafted vectors (tests/train/lookup.py): every ranking below is
chosen by the test, so the expected negatives are written out by hand, not recomputed.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

import lookup
from umr.index import ModelMismatch
from umr.models.identity import model_identity
from umr.train.mine import (MineSettings, Ranked, errors_path, mine_file, provenance_path,
                            select_negatives)

lookup.install()  # the model "lookup-test", for the command-line tests

# query "q-t2i" (target: image; positive: the image "pos"), its ranking of the pool:
T2I_RANKING = [("f1", "image,text"), ("pos", "image"), ("t1", "text"), ("i2", "image"), ("i3", "image"),
               ("t2", "text"), ("i4", "image"), ("f2", "image,text"), ("i5", "image"), ("t3", "text")]
# query "q-t2t" (target: text; positive given by content only: the text of "t2"):
T2T_RANKING = [("t2", "text"), ("i2", "image"), ("t3", "text"), ("f1", "image,text"), ("t1", "text"),
               ("i4", "image"), ("pos", "image"), ("f2", "image,text"), ("i3", "image"), ("i5", "image")]
SETTINGS = dict(top_k=8, skip=4)


def ranked(pairs):
    return [Ranked(cid, rank, modality) for rank, (cid, modality) in enumerate(pairs, start=1)]


def picked(chosen):
    return [(cand.id, cand.rank, kind) for cand, kind in chosen]


# -- the definition, on a ranking ------------------------------------------------------------------


def test_modality_aware_negatives_are_type1_anywhere_in_top_k_and_type2_beyond_skip():
    chosen = select_negatives(ranked(T2I_RANKING), {"pos"}, "image", MineSettings(**SETTINGS))
    assert picked(chosen) == [("f1", 1, "wrong_modality"), ("t1", 3, "wrong_modality"),
                              ("i3", 5, "same_modality"), ("t2", 6, "wrong_modality"),
                              ("i4", 7, "same_modality"), ("f2", 8, "wrong_modality")]


def test_plain_negatives_are_non_positives_beyond_skip_whatever_their_modality():
    chosen = select_negatives(ranked(T2I_RANKING), {"pos"}, "image", MineSettings(plain=True, **SETTINGS))
    assert picked(chosen) == [("i3", 5, "plain"), ("t2", 6, "plain"), ("i4", 7, "plain"), ("f2", 8, "plain")]


def test_negatives_k_keeps_the_best_ranked_of_each_kind():
    chosen = select_negatives(ranked(T2I_RANKING), {"pos"}, "image", MineSettings(negatives=2, **SETTINGS))
    assert picked(chosen) == [("f1", 1, "wrong_modality"), ("t1", 3, "wrong_modality"),
                              ("i3", 5, "same_modality"), ("i4", 7, "same_modality")]


def test_a_positive_is_never_a_negative_even_of_the_wrong_modality_or_beyond_skip():
    # "f1" (fused, rank 1) and "i3" (image, rank 5) are labelled positives too
    for plain in (False, True):
        chosen = select_negatives(ranked(T2I_RANKING), {"pos", "f1", "i3"}, "image",
                                  MineSettings(plain=plain, **SETTINGS))
        assert not {"pos", "f1", "i3"} & {cand.id for cand, _ in chosen}


def test_fused_target_makes_text_and_image_the_wrong_modalities():
    chosen = select_negatives(ranked(T2I_RANKING), {"pos"}, "text,image", MineSettings(**SETTINGS))
    assert picked(chosen) == [("t1", 3, "wrong_modality"), ("i2", 4, "wrong_modality"),
                              ("i3", 5, "wrong_modality"), ("t2", 6, "wrong_modality"),
                              ("i4", 7, "wrong_modality"), ("f2", 8, "same_modality")]


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(top_k=5, skip=5), dict(skip=-1), dict(negatives=0),
                                 dict(target_modality="video")])
def test_settings_refuse_what_cannot_select_anything(bad):
    with pytest.raises(ValueError):
        MineSettings(**bad)


# -- end to end: pool index, queries, output -------------------------------------------------------


def _png(path, colour):
    Image.new("RGB", (8, 8), colour).save(path)
    return path.name


@pytest.fixture
def fixture(tmp_path, monkeypatch):
    """A mixed pool (texts, images, fused) and a training JSONL whose rankings the test chose."""
    ids = [cid for cid, _ in T2I_RANKING]
    monkeypatch.setattr(lookup, "AXES", {cid: i for i, cid in enumerate(ids)})
    n = len(ids)
    monkeypatch.setattr(lookup, "QUERY_WEIGHTS", {
        "q-t2i": {cid: float(n - r) for r, (cid, _) in enumerate(T2I_RANKING)},
        "q-t2t": {cid: float(n - r) for r, (cid, _) in enumerate(T2T_RANKING)},
    })
    pool_lines = []
    for cid, modality in T2I_RANKING:
        record = {"id": cid, "text": None, "image": None}
        if modality != "image":
            record["text"] = f"the text of {cid}"
        if modality != "text":
            record["image"] = "img/" + _png((tmp_path / "img").mkdir(exist_ok=True) or tmp_path / "img" / f"{cid}.png",
                                            (10 * len(pool_lines), 0, 0))
        pool_lines.append(json.dumps(record))
    (tmp_path / "pool.jsonl").write_text("\n".join(pool_lines) + "\n")
    examples = [
        {"query": {"id": "q-t2i", "text": "a picture of pos"}, "positive": {"id": "pos", "image": "img/pos.png"},
         "source": "t2i"},
        {"query": {"id": "q-t2t", "text": "a question about t2", "instruction": "Find the passage."},
         "positive": {"text": "the text of t2"}, "negatives": [{"text": "given by hand"}], "source": "t2t"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    return tmp_path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mine_file_writes_exactly_the_defined_negatives_with_contents_and_annotations(fixture):
    out = fixture / "out" / "mined.jsonl"
    summary = mine_file(lookup.LookupEmbedder(), data=fixture / "train.jsonl", pool=fixture / "pool.jsonl",
                        output=out, settings=MineSettings(**SETTINGS), show_progress=False)
    t2i, t2t = _read(out)
    got = [(n["id"], n["rank"], n["modality"], n["kind"]) for n in t2i["negatives"]]
    assert got == [("f1", 1, "image,text", "wrong_modality"), ("t1", 3, "text", "wrong_modality"),
                   ("i3", 5, "image", "same_modality"), ("t2", 6, "text", "wrong_modality"),
                   ("i4", 7, "image", "same_modality"), ("f2", 8, "image,text", "wrong_modality")]
    f1 = t2i["negatives"][0]
    assert f1["text"] == "the text of f1" and f1["image"] == str((fixture / "img" / "f1.png").resolve())
    assert t2i["target_modality"] == "image" and t2i["source"] == "t2i"
    assert t2i["positive"]["image"] == str((fixture / "img" / "pos.png").resolve())
    # target text (the positive's modality); the positive, known only by content ("t2"), is excluded;
    # mined negatives replace the hand-given one; the query keeps its instruction
    got = [(n["id"], n["rank"], n["kind"]) for n in t2t["negatives"]]
    assert got == [("i2", 2, "wrong_modality"), ("f1", 4, "wrong_modality"), ("t1", 5, "same_modality"),
                   ("i4", 6, "wrong_modality"), ("pos", 7, "wrong_modality"), ("f2", 8, "wrong_modality")]
    assert t2t["query"]["instruction"] == "Find the passage."
    assert summary.examples == 2 and summary.negatives == {"wrong_modality": 9, "same_modality": 3, "plain": 0}
    assert not summary.errors and not errors_path(out).exists()


def test_provenance_names_model_pool_data_and_settings(fixture):
    out = fixture / "mined.jsonl"
    model = lookup.LookupEmbedder()
    mine_file(model, data=fixture / "train.jsonl", pool=fixture / "pool.jsonl", output=out,
              settings=MineSettings(negatives=1, **SETTINGS), show_progress=False)
    record = json.loads(provenance_path(out).read_text())
    assert record["model"]["name"] == "lookup-test" and record["model"]["identity"] == model_identity(model).key()
    assert record["pool"]["items"] == 10 and record["pool"]["fingerprint"]
    assert record["data"]["path"] == str((fixture / "train.jsonl").resolve())
    assert record["settings"] == {"top_k": 8, "skip": 4, "negatives": 1, "target_modality": None, "plain": False,
                                  "instruction": None}
    assert record["summary"]["negatives"] == {"wrong_modality": 2, "same_modality": 2, "plain": 0}


def test_pool_index_is_reused_and_another_model_state_is_refused(fixture, monkeypatch):
    out = fixture / "mined.jsonl"
    args = dict(data=fixture / "train.jsonl", pool=fixture / "pool.jsonl", output=out,
                settings=MineSettings(plain=True, **SETTINGS), show_progress=False)
    mine_file(lookup.LookupEmbedder(), **args)
    first = out.read_text()
    t2i, t2t = _read(out)
    assert [(n["id"], n["rank"], n["kind"]) for n in t2i["negatives"]] == [
        ("i3", 5, "plain"), ("t2", 6, "plain"), ("i4", 7, "plain"), ("f2", 8, "plain")]
    assert [n["id"] for n in t2t["negatives"]] == ["t1", "i4", "pos", "f2"]  # ranks 5-8 of q-t2t
    mine_file(lookup.LookupEmbedder(), **args)  # the index exists: nothing re-embedded, same output
    assert out.read_text() == first
    monkeypatch.setattr(lookup.LookupEmbedder, "shift", 0.5)
    with pytest.raises(ModelMismatch, match="shift: 0.0 vs 0.5"):  # the index's own model check
        mine_file(lookup.LookupEmbedder(), **args)


def test_a_model_retrained_at_the_same_path_is_refused_by_its_identity(tiny_text_dir, tmp_path):
    """The pool index checks the model's identity (files, options) as ``umr search`` does: new
    weights written where the old ones were are another model."""
    import shutil

    from safetensors.torch import load_file, save_file

    import umr

    folder = tmp_path / "model"
    shutil.copytree(tiny_text_dir, folder)
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"passage number {i}"}) + "\n"
                                                 for i in range(6)))
    (tmp_path / "train.jsonl").write_text(json.dumps({"query": {"text": "number two"},
                                                      "positive": {"id": "d2", "text": "passage number 2"}}) + "\n")
    args = dict(data=tmp_path / "train.jsonl", pool=tmp_path / "pool.jsonl", output=tmp_path / "mined.jsonl",
                settings=MineSettings(top_k=4, skip=1), show_progress=False)
    assert mine_file(umr.load_model(folder), **args).examples == 1
    assert mine_file(umr.load_model(folder), **args).examples == 1  # same weights: the index is reused
    weights = load_file(str(folder / "model.safetensors"))
    name = next(iter(weights))
    save_file({**weights, name: weights[name] + 0.01}, str(folder / "model.safetensors"))  # "retrained"
    with pytest.raises(ModelMismatch, match="weights/config files"):
        mine_file(umr.load_model(folder), **args)


def test_bad_examples_are_reported_and_the_rest_is_mined(fixture):
    lines = (fixture / "train.jsonl").read_text().splitlines()
    bad = ['{"query": ', json.dumps({"query": {"text": "no positive"}}),
           json.dumps({"query": {"id": "q-gone", "image": "img/missing.png"}, "positive": {"id": "pos"}})]
    (fixture / "train.jsonl").write_text("\n".join([bad[0], lines[0], bad[1], bad[2], lines[1]]) + "\n")
    out = fixture / "mined.jsonl"
    summary = mine_file(lookup.LookupEmbedder(), data=fixture / "train.jsonl", pool=fixture / "pool.jsonl",
                        output=out, settings=MineSettings(**SETTINGS), show_progress=False)
    assert [e["query"]["id"] for e in _read(out)] == ["q-t2i", "q-t2t"]
    errors = _read(errors_path(out))
    assert [e["line"] for e in errors] == [1, 3, 4]
    assert "positive" in errors[1]["error"] and "missing.png" in errors[2]["error"]
    assert len(summary.errors) == 3


def _mbeir(root):
    (root / "query" / "train").mkdir(parents=True)
    (root / "cand_pool" / "local").mkdir(parents=True)
    (root / "instructions").mkdir()
    (root / "mbeir_images").mkdir()
    pool = []
    for cid, modality in T2I_RANKING:
        record = {"did": f"9:{cid}", "txt": f"the text of {cid}" if modality != "image" else "",
                  "img_path": (f"mbeir_images/{cid}.png" if modality != "text" else None), "modality": modality}
        if record["img_path"]:
            Image.new("RGB", (8, 8), (len(pool) * 20, 0, 0)).save(root / record["img_path"])
        pool.append(json.dumps(record))
    (root / "cand_pool" / "local" / "mbeir_mscoco_task0_cand_pool.jsonl").write_text("\n".join(pool) + "\n")
    query = {"qid": "9:q-t2i", "query_txt": "a picture of pos", "query_img_path": None, "query_modality": "text",
             "pos_cand_list": ["9:pos"], "neg_cand_list": []}
    (root / "query" / "train" / "mbeir_mscoco_task0_train.jsonl").write_text(json.dumps(query) + "\n")
    (root / "instructions" / "query_instructions.tsv").write_text(
        "query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\n"
        "text\timage\tmscoco\t9\tfind an image that matches the caption\n")


def test_mbeir_training_queries_target_the_task_modality_and_get_uniir_instructions(tmp_path, monkeypatch):
    root = tmp_path / "M-BEIR"
    _mbeir(root)
    ids = [f"9:{cid}" for cid, _ in T2I_RANKING]
    monkeypatch.setattr(lookup, "AXES", {cid: i for i, cid in enumerate(ids)})
    monkeypatch.setattr(lookup, "QUERY_WEIGHTS", {"9:q-t2i": {cid: float(len(ids) - r) for r, cid in enumerate(ids)}})
    out = tmp_path / "mined.jsonl"
    mine_file(lookup.LookupEmbedder(), mbeir=root, pool=root / "cand_pool" / "local" / "mbeir_mscoco_task0_cand_pool.jsonl",
              output=out,
              settings=MineSettings(**SETTINGS), show_progress=False)
    (example,) = _read(out)
    assert example["query"]["instruction"] == "Find an image that matches the caption."
    assert example["source"] == "mscoco_task0" and example["target_modality"] == "image"
    assert example["positive"] == {"id": "9:pos", "text": None,
                                   "image": str((root / "mbeir_images" / "pos.png").resolve())}
    assert [(n["id"], n["kind"]) for n in example["negatives"]] == [
        ("9:f1", "wrong_modality"), ("9:t1", "wrong_modality"), ("9:i3", "same_modality"),
        ("9:t2", "wrong_modality"), ("9:i4", "same_modality"), ("9:f2", "wrong_modality")]


def test_mbeir_bad_query_records_are_mining_errors_and_the_rest_is_mined(tmp_path):
    from train_fixtures import mbeir_with_bad_records

    root = tmp_path / "M-BEIR"
    expected = mbeir_with_bad_records(root)
    expected = {line: says for line, says in expected.items() if line not in (7, 8, 9)}  # bad negatives: replaced
    out = tmp_path / "mined.jsonl"
    summary = mine_file(lookup.LookupEmbedder(), mbeir=root, pool=root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl",
                        output=out, settings=MineSettings(top_k=3, skip=0), show_progress=False)
    assert [e["query"]["id"] for e in _read(out)] == ["9:1", "9:7", "9:8", "9:9", "9:14"]
    errors = _read(errors_path(out))
    assert {e["line"]: e for e in errors}.keys() == expected.keys() and summary.examples == 5
    assert all(expected[e["line"]] in e["error"] for e in errors)


def test_cli_mine_writes_the_same_file_as_python(fixture, capsys):
    from umr.cli import main

    out = fixture / "cli.jsonl"
    code = main(["mine", "--model", "lookup-test", "--data", str(fixture / "train.jsonl"), "--pool",
                 str(fixture / "pool.jsonl"), "--output", str(out), "--top-k", "8", "--skip", "4",
                 "--negatives", "1", "--target-modality", "image", "--no-progress"])
    assert code == 0
    assert "2 example(s) written" in capsys.readouterr().out
    # --target-modality image for both: q-t2t's text candidates become the wrong modality
    t2i, t2t = _read(out)
    assert [(n["id"], n["kind"]) for n in t2i["negatives"]] == [("f1", "wrong_modality"), ("i3", "same_modality")]
    assert [(n["id"], n["kind"]) for n in t2t["negatives"]] == [("t3", "wrong_modality"), ("i4", "same_modality")]


def test_cli_refuses_bad_settings_in_one_line(fixture, capsys):
    from umr.cli import main

    code = main(["mine", "--model", "lookup-test", "--data", str(fixture / "train.jsonl"), "--pool",
                 str(fixture / "pool.jsonl"), "--output", str(fixture / "x.jsonl"), "--top-k", "5", "--skip", "9"])
    assert code == 2 and "skip must be" in capsys.readouterr().err


def test_every_pool_copy_of_a_positive_given_by_content_is_excluded(fixture, monkeypatch):
    with (fixture / "pool.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "t2-copy", "text": "the text of t2", "image": None}) + "\n")
    monkeypatch.setitem(lookup.AXES, "t2-copy", len(lookup.AXES))
    monkeypatch.setitem(lookup.QUERY_WEIGHTS["q-t2t"], "t2-copy", 9.5)  # rank 2, just below "t2"
    out = fixture / "mined.jsonl"
    mine_file(lookup.LookupEmbedder(), data=fixture / "train.jsonl", pool=fixture / "pool.jsonl", output=out,
              settings=MineSettings(**SETTINGS), show_progress=False)
    t2t = _read(out)[1]
    assert [(n["id"], n["rank"]) for n in t2t["negatives"]][:2] == [("i2", 3), ("f1", 5)]
    assert not {"t2", "t2-copy"} & {n["id"] for n in t2t["negatives"]}
