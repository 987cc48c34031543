"""Every stage of ``umr synth`` with a tiny generator whose replies are scripted through its logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from umr.synth import ClipScorer, OwnImages, SynthConfig, parse_reply, synthesize
from umr.core.items import Item

from .conftest import CountingGenerator, check_training_schema, read, run, scripted_generator

CAPTION = "a photo of {entity}"


def test_parse_reply_finds_the_object_in_prose():
    assert parse_reply('Sure! ```json\n{"query": "q?", "answer": "a"}\n```', ["query", "answer"]) == \
        {"query": "q?", "answer": "a"}
    assert parse_reply('{"query": "q?"}', ["query", "answer"]) is None
    assert parse_reply('{"query": "", "answer": "a"}', ["query", "answer"]) is None
    assert parse_reply("no json {", ["query"]) is None


def test_stages_retry_report_and_write_training_jsonl(tiny_generator_dir, tiny_clip, corpus, tmp_path):
    generator = CountingGenerator(scripted_generator(tiny_generator_dir))
    out = tmp_path / "synth.jsonl"
    summary = run(corpus, out, generator, tiny_clip, image_threshold=-1.0)
    errors = {e.item_id: e.reason for e in summary.errors}
    # always malformed: three replies, then reported; once malformed: kept on its second reply
    assert set(errors) == {"malformed.png"}
    assert "no valid reply after 3 attempts" in errors["malformed.png"]
    assert summary.stages["doc2query"]["kept"] == 8  # 9 passages, one reported
    records = read(out)
    by_source = {}
    for r in records:
        by_source.setdefault(r["provenance"]["source_id"], []).append(r)
    assert by_source["oncebad.png"][0]["provenance"]["attempts"]["doc2query"] == 2
    assert by_source["heron.png"][0]["provenance"]["attempts"] == {"doc2query": 1, "entity": 1}
    # the note has no image: filtered at the image stage; each image has only itself: no it2it
    assert "notes.txt" not in by_source
    assert summary.stages["images"]["no image kept"] == 1
    assert {r["kind"] for r in records} == {"t2it", "it2t"}
    assert summary.stages["output"]["it2it: no second image"] == 7
    heron = {r["kind"]: r for r in by_source["heron.png"]}
    assert heron["t2it"]["query"]["text"] == "Where does the heron belong?"
    assert heron["t2it"]["positive"]["text"] == "The grey heron wades in shallow lakes hunting fish."
    assert heron["t2it"]["positive"]["image"].endswith("heron.png")
    assert heron["it2t"]["query"] == {"text": "Where does this thing belong?", "image": heron["t2it"]["positive"]["image"],
                                      "instruction": heron["it2t"]["query"]["instruction"]}
    assert heron["it2t"]["provenance"]["entity"] == "heron"
    assert "image" not in heron["it2t"]["positive"]
    check_training_schema(out)
    # 9 doc2query first replies + 2 retries of the malformed one + 1 of the once-bad one + 8 entity replies
    assert generator.replies == summary.generated == 9 + 2 + 1 + 8

    again = CountingGenerator(scripted_generator(tiny_generator_dir))
    before = out.read_bytes()
    assert run(corpus, out, again, tiny_clip, image_threshold=-1.0).generated == 0
    assert again.replies == 0 and out.read_bytes() == before


def test_rewrite_that_still_names_the_entity_is_retried_then_reported(tiny_generator_dir, tiny_clip, corpus, tmp_path):
    def reply(prompt):
        from .conftest import scripted_reply

        text = scripted_reply(prompt)
        return text.replace("this thing", "the kettle") if '"entity": "kettle"' in text else text

    summary = run(corpus, tmp_path / "o.jsonl", scripted_generator(tiny_generator_dir, reply), tiny_clip,
                  image_threshold=-1.0)
    reasons = {e.item_id: e.reason for e in summary.errors}
    assert "still names the entity" in reasons["kettle.png"]
    assert "kettle.png" not in {r["provenance"]["source_id"] for r in read(tmp_path / "o.jsonl")}


def own_rank(clip, passages: list[Item], query: str, pid: str) -> int:
    vectors = clip.encode_candidates(passages, show_progress_bar=False)
    scores = vectors @ clip.encode_queries([query], show_progress_bar=False)[0]
    order = [passages[i].id for i in np.argsort(-scores, kind="stable")]
    return order.index(pid) + 1


def test_consistency_filter_drops_exactly_queries_outside_top_k(tiny_generator_dir, tiny_clip, corpus, tmp_path):
    from umr.data.corpus import read_corpus

    passages = [e.load() for e in read_corpus(corpus)]
    passages = [Item.candidate(text=p.text, image=p.image, id=p.id) for p in passages]
    queries = {p.id: f"Where does the {p.text.split()[2].lower()} belong?" for p in passages}
    queries["oncebad.png"] = "Where does the tulip belong?"
    k = 3
    expected = {pid for pid, q in queries.items() if pid != "malformed.png" and own_rank(tiny_clip, passages, q, pid) <= k}
    assert 0 < len(expected) < 8  # the test means something: some in, some out
    summary = run(corpus, tmp_path / "o.jsonl", scripted_generator(tiny_generator_dir), tiny_clip,
                  image_threshold=-1.0, top_k=k, kinds=["t2it"])
    assert summary.stages["consistency"]["kept"] == len(expected)
    assert summary.stages["consistency"][f"passage not in top-{k}"] == 8 - len(expected)
    kept = {r["provenance"]["source_id"] for r in read(tmp_path / "o.jsonl")}
    assert kept == expected - {"notes.txt"}


def test_image_filter_drops_exactly_images_under_the_threshold(tiny_generator_dir, tiny_clip, corpus, tmp_path):
    subjects = {"heron", "maple", "kettle", "lantern", "anchor", "violin", "tulip"}
    files = {s: ("oncebad" if s == "tulip" else s) for s in subjects}
    direct = {}
    for subject, name in files.items():
        text = tiny_clip.encode_candidates([CAPTION.format(entity=subject)], show_progress_bar=False)[0]
        image = tiny_clip.encode_candidates([Item.candidate(image=str(corpus / f"{name}.png"))],
                                            show_progress_bar=False)[0]
        direct[f"{name}.png"] = float(text @ image)
    threshold = float(np.median(list(direct.values())))
    expected = {pid for pid, s in direct.items() if s >= threshold}
    assert 0 < len(expected) < len(direct)
    summary = run(corpus, tmp_path / "o.jsonl", scripted_generator(tiny_generator_dir), tiny_clip,
                  image_threshold=threshold, kinds=["it2t"])
    records = read(tmp_path / "o.jsonl")
    assert {r["provenance"]["source_id"] for r in records} == expected
    assert summary.stages["images"]["images under the threshold"] == len(direct) - len(expected)
    for r in records:
        assert r["provenance"]["image_score"] == pytest.approx(direct[r["positive"]["id"]], abs=1e-5)


def test_near_duplicate_queries_keep_the_first(tiny_generator_dir, tiny_clip, corpus, tmp_path):
    (corpus / "heron2.txt").write_text("The grey heron stands in reeds.", encoding="utf-8")
    summary = run(corpus, tmp_path / "o.jsonl", scripted_generator(tiny_generator_dir), tiny_clip,
                  image_threshold=-1.0)
    assert summary.stages["dedup"]["near-duplicate query"] == 1
    sources = [r["provenance"]["source_id"] for r in read(tmp_path / "o.jsonl")]
    assert "heron.png" in sources and "heron2.txt" not in sources


def test_a_bad_image_and_a_failing_generation_are_reported_and_skipped(tiny_generator_dir, tiny_clip, corpus,
                                                                        tmp_path):
    (corpus / "broken.png").write_bytes(b"not a png at all")
    (corpus / "broken.txt").write_text("The broken cup lies on the shelf.", encoding="utf-8")
    inner = scripted_generator(tiny_generator_dir)

    class Failing(CountingGenerator):
        def generate(self, chats, *, seed):
            if any("lantern" in chat[-1]["content"] for chat in chats):
                raise RuntimeError("out of memory")
            return super().generate(chats, seed=seed)

    summary = run(corpus, tmp_path / "o.jsonl", Failing(inner), tiny_clip, image_threshold=-1.0)
    reasons = {e.item_id: e.reason for e in summary.errors}
    assert "generation failed: RuntimeError: out of memory" in reasons["lantern.png"]
    assert "broken.png" in reasons
    sources = {r["provenance"]["source_id"] for r in read(tmp_path / "o.jsonl")}
    assert {"heron.png", "maple.png", "kettle.png"} <= sources
    assert not sources & {"lantern.png", "broken.png"}
    lines = (tmp_path / "o.jsonl.errors.jsonl").read_text().splitlines()
    assert {json.loads(line)["id"] for line in lines} == set(reasons)


def test_text_to_image_and_collection_sources_give_second_images(tiny_generator_dir, tiny_clip, corpus, tmp_path):
    from PIL import Image

    from umr.synth import ImageCollection, TextToImage

    drawn = []

    def draw(prompt):
        drawn.append(prompt)
        return Image.new("RGB", (32, 32), (len(prompt) * 7 % 255, 90, 160))

    collection = tmp_path / "collection"
    collection.mkdir()
    Image.new("RGB", (40, 40), (10, 220, 90)).save(collection / "green.png")
    config = SynthConfig(source=str(corpus), output=str(tmp_path / "o.jsonl"), progress=False, image_threshold=-1.0)

    def sources():
        return [OwnImages(), TextToImage(draw, tmp_path / "drawn"),
                ImageCollection(collection, tiny_clip, tmp_path / "collection-index", top=1)]

    summary = synthesize(config, generator=scripted_generator(tiny_generator_dir), retriever=tiny_clip,
                         scorer=ClipScorer(tiny_clip), image_sources=sources())
    assert sorted(drawn) == sorted(f"a photo of {s}" for s in
                                   ("heron", "maple", "kettle", "lantern", "anchor", "violin", "tulip", "about"))
    records = read(tmp_path / "o.jsonl")
    assert summary.examples["it2it"] == 8  # the note now has a drawn and a collection image too
    origins = {r["provenance"]["image_origin"] for r in records}
    assert origins <= {"own", "generated", "collection"} and len(origins) > 1
    for r in records:
        if r["kind"] == "it2it":
            assert r["query"]["image"] != r["positive"]["image"]
    drawn.clear()
    synthesize(config, generator=scripted_generator(tiny_generator_dir), retriever=tiny_clip,
               scorer=ClipScorer(tiny_clip), image_sources=sources())
    assert drawn == []  # drawn images are kept by content key
