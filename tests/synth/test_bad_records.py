"""A bad record in the source of ``umr synth`` is reported and the other passages go on: an M-BEIR
pool with a number where text belongs stopped the whole run with a TypeError before reading."""

from __future__ import annotations

import json

from umr.synth import ClipScorer, OwnImages, SynthConfig, synthesize

from .conftest import CAPTIONS, CountingGenerator, scripted_generator


def test_bad_pool_records_are_reported_and_the_rest_synthesised(tiny_generator_dir, tiny_clip, tmp_path):
    good = [{"did": f"1:{i}", "txt": caption, "img_path": None, "modality": "text"}
            for i, caption in enumerate(list(CAPTIONS.values())[:4])]
    bad = [{"did": "9:1", "txt": 1234, "img_path": None, "modality": "text"},
           {"did": "9:2", "txt": "  ", "img_path": None, "modality": "text"},
           {"txt": "a record without a did", "modality": "text"}]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in good[:2] + bad + good[2:]) + "[]\n")
    generator = CountingGenerator(scripted_generator(tiny_generator_dir))
    config = SynthConfig(source=str(pool), output=str(tmp_path / "o.jsonl"), progress=False, batch_size=3)
    summary = synthesize(config, generator=generator, retriever=tiny_clip, scorer=ClipScorer(tiny_clip),
                         image_sources=[OwnImages()])
    reasons = {(e.item_id, e.line): e.reason for e in summary.errors}
    assert reasons == {("9:1", 3): "read: field 'txt' must be a string or null, got int",
                       ("9:2", 4): "read: has neither text nor image (an empty or blank text is no text)",
                       (None, 5): "read: has no 'did' (its id)",
                       (None, 8): "read: expected a JSON object, got list"}
    assert summary.stages["read"]["kept"] == 4 and summary.stages["doc2query"]["kept"] == 4
    lines = (tmp_path / "o.jsonl.errors.jsonl").read_text().splitlines()
    assert len(lines) == 4
