"""GME backend: parity with an item-at-a-time reference, batch invariance, bad input, loading.

The reference (:class:`umr.verify.references.GmeReference`, which `umr verify` runs) follows GME's published inference code literally, one item at a time:
build the message string, ``fetch_image`` (RGB + smart resize with PIL's default filter), then
transformers' own Qwen2-VL processor (image processor + tokenizer, right padding,
``truncation=True, max_length=1800``), then the base Qwen2-VL modules called the way the
reference calls them (token embeddings, the vision tower, the text decoder with
``position_ids=None``), pooling the last non-padding token. umr's path shares none of it.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

import umr
from umr.cli import main
from umr.core.items import Item
from umr.verify.references import GmeReference

TOL = 1e-5
DEFAULT_INSTRUCTION = "You are a helpful assistant."


# -- the reference (umr verify's, written apart from umr's fast path) -----------------------

ReferenceGme = GmeReference
_ref_fetch_image = GmeReference.fetch_image


# -- fixtures ----------------------------------------------------------------------------------

def _noise(width, height, mode="RGB", seed=0):
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 256, (height, width, 3), dtype=np.uint8)
    # smooth structure + noise so resizing filters matter
    yy, xx = np.mgrid[0:height, 0:width]
    base[..., 0] = (base[..., 0] // 4 + (xx * 255 // max(width, 1)) * 3 // 4).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    if mode == "L":
        return image.convert("L")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.randint(0, 256, (height, width), dtype=np.uint8), "L")
        image = image.convert("RGBA")
        image.putalpha(alpha)
        return image
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return image


@pytest.fixture(scope="module")
def gme(tiny_gme_dir):
    return umr.load_model(tiny_gme_dir)


@pytest.fixture(scope="module")
def ref(tiny_gme_dir):
    return ReferenceGme(tiny_gme_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gme-images")
    specs = {"photo": (320, 240, "RGB"), "tall": (200, 480, "RGB"), "tiny": (17, 5, "RGB"),
             "one": (1, 1, "RGB"), "wide": (900, 30, "RGB"), "large": (1500, 1100, "RGB"),
             "gray": (123, 77, "L"), "rgba": (150, 100, "RGBA"), "palette": (90, 160, "P")}
    paths = {}
    for i, (name, (w, h, mode)) in enumerate(specs.items()):
        path = folder / f"{name}.png"
        _noise(w, h, mode, seed=i).save(path)
        paths[name] = path
    jpeg = folder / "photo.jpg"
    _noise(257, 191, seed=42).save(jpeg, quality=90)
    paths["jpeg"] = jpeg
    return paths


def _check(gme, ref, item: Item):
    ours = gme.embed([item]).vectors[0]
    theirs = ref.embed(item)
    delta = float(np.abs(ours - theirs).max())
    assert delta <= TOL, f"{item.id}: max|delta| = {delta:.2e}"
    return delta


# -- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["A dog running on the beach.", ".", "x", "Wikipedia: the 2024 city of rivers, 42!"])
def test_text_candidate_parity(gme, ref, text):
    _check(gme, ref, Item.candidate(text, id="t"))


@pytest.mark.parametrize("name", ["photo", "tall", "tiny", "one", "wide", "gray", "rgba", "palette", "jpeg"])
def test_image_candidate_parity(gme, ref, images, name):
    _check(gme, ref, Item.candidate(image=images[name], id=name))


def test_large_image_parity(gme, ref, images):
    _check(gme, ref, Item.candidate(image=images["large"], id="large"))


@pytest.mark.parametrize("name", ["photo", "wide", "palette"])
def test_fused_candidate_parity(gme, ref, images, name):
    _check(gme, ref, Item.candidate("a red car on a bridge", image=images[name], id=name))


def test_pil_image_parity(gme, ref):
    image = _noise(333, 222, "RGBA", seed=7)
    _check(gme, ref, Item.candidate("what is this", image=image, id="pil"))


@pytest.mark.parametrize("instruction", [None, "Find an image that matches the given text.",
                                         "Retrieve a Wikipedia passage that answers the question."])
def test_query_parity(gme, ref, images, instruction):
    _check(gme, ref, Item.query("what kind of car is this?", instruction=instruction, id="q1"))
    _check(gme, ref, Item.query(image=images["photo"], instruction=instruction, id="q2"))
    _check(gme, ref, Item.query("what is in the picture", image=images["tall"], instruction=instruction, id="q3"))


def test_instruction_changes_query_not_candidate(gme):
    plain = gme.encode_queries(["what kind of car is this?"])
    told = gme.encode_queries(["what kind of car is this?"], instruction="Find an image.")
    assert np.abs(plain - told).max() > 1e-3
    # candidates never carry an instruction, so an instruction on an Item is ignored
    cand = gme.encode_candidates([Item(text="what kind of car is this?", instruction="Find an image.")])
    assert np.abs(cand - plain).max() <= TOL  # default instruction for both


def test_truncated_text_parity(gme, ref, images):
    rng = random.Random(3)
    words = "the of a dog cat image photo river mountain 2024 wikipedia assistant".split()
    long_text = " ".join(rng.choice(words) for _ in range(3000))
    ids = gme.processor.prepare(Item.candidate(long_text)).input_ids
    assert len(ids) == 1800  # cut at max_length: the <|endoftext|> is gone as in the reference
    _check(gme, ref, Item.candidate(long_text, id="long"))
    _check(gme, ref, Item.query(long_text, image=images["photo"], instruction="Find it.", id="long-fused"))


def test_tiny_checkpoint_is_deterministic(tmp_path):
    from umr.testing import write_tiny_gme

    a = write_tiny_gme(tmp_path / "a", seed=0)
    b = write_tiny_gme(tmp_path / "b", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "preprocessor_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# -- batches -----------------------------------------------------------------------------------

def _mixed_items(images):
    return [
        Item.candidate("A dog running on the beach.", id="t1"),
        Item.candidate(image=images["photo"], id="i1"),
        Item.query("find the red car", image=images["tall"], instruction="Find a matching image.", id="f1"),
        Item.candidate("x", id="t2"),
        Item.candidate(image=images["tiny"], id="i2"),
        Item.query("what is the tallest mountain in the city of rivers?", id="q1"),
        Item.candidate("a long caption " * 30, image=images["wide"], id="f2"),
        Item.candidate(image=images["gray"], id="i3"),
        Item.query(image=images["rgba"], instruction="Find a caption.", id="q2"),
        Item.candidate("one two three", image=images["palette"], id="f3"),
        Item.candidate("Wikipedia " * 60, id="t3"),
    ]


def test_batch_invariance(gme, images):
    items = _mixed_items(images)
    alone = np.stack([gme.embed([item]).vectors[0] for item in items])
    rng = random.Random(0)
    worst = 0.0
    for batch_size in (2, 3, 5, 32):
        order = list(range(len(items)))
        rng.shuffle(order)
        result = gme.embed([items[i] for i in order], batch_size=batch_size)
        assert list(result.indices) == list(range(len(items)))
        worst = max(worst, float(np.abs(result.vectors - alone[order]).max()))
    assert worst <= TOL, worst


def test_batch_invariance_through_forward_directly(gme, images):
    """Rows of one padded forward pass (no cost sorting) equal the items alone."""
    items = _mixed_items(images)
    processed = [gme.processor.prepare(item) for item in items]
    together = torch.nn.functional.normalize(gme.forward(processed), dim=-1).numpy()
    alone = np.concatenate([torch.nn.functional.normalize(gme.forward([p]), dim=-1).numpy() for p in processed])
    assert np.abs(together - alone).max() <= TOL


def test_vectors_are_normalised_and_dim(gme, images):
    vectors = gme.embed(_mixed_items(images)).vectors
    assert vectors.dtype == np.float32 and vectors.shape[1] == gme.dim == 32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_cost_tracks_tokens(gme, images):
    for item in _mixed_items(images):
        real = len(gme.processor.prepare(item).input_ids)
        estimate = gme._cost(item)
        assert abs(estimate - real) <= max(12, 0.35 * real), (item.id, estimate, real)


# -- image token bounds ------------------------------------------------------------------------

def test_image_token_bounds(tiny_gme_dir, images):
    small = umr.load_model(tiny_gme_dir, min_image_tokens=4, max_image_tokens=16)
    default = umr.load_model(tiny_gme_dir)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    hf_small = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    for name in ("photo", "large", "tiny", "wide"):
        with Image.open(images[name]) as img:
            w, h = img.size
        n_small = small.processor.num_image_tokens(w, h)
        n_default = default.processor.num_image_tokens(w, h)
        fetched = _ref_fetch_image(images[name])
        assert n_small == hf_small.get_number_of_image_patches(fetched.height, fetched.width) // 4
        if name != "wide":  # each side keeps >= 28 px, so a 30:1 image may go over the cap, as in Qwen2-VL
            assert 4 <= n_small <= 16, (name, n_small)
            assert 256 <= n_default <= 1280, (name, n_default)
        # the grid of the processed image follows the same numbers
        p = small.processor.prepare(Item(image=images[name]))
        assert p.grid_thw[1] * p.grid_thw[2] // 4 == n_small
        assert p.input_ids.count(small.image_token_id) == n_small
    # a 1500x1100 image is capped at max_image_tokens and keeps its aspect ratio roughly
    _, gh, gw = small.processor.image_grid(1500, 1100)
    assert gh * gw // 4 <= 16 and gw >= gh


def test_image_token_bounds_parity(tiny_gme_dir, images):
    small = umr.load_model(tiny_gme_dir, min_image_tokens=4, max_image_tokens=16)
    ref = ReferenceGme(tiny_gme_dir, min_image_tokens=4, max_image_tokens=16)
    for name in ("photo", "large", "tiny"):
        _check(small, ref, Item.candidate("a caption", image=images[name], id=name))


def test_bad_token_bounds(tiny_gme_dir):
    with pytest.raises(ValueError, match="min_image_tokens"):
        umr.load_model(tiny_gme_dir, min_image_tokens=100, max_image_tokens=10)


# -- loading -----------------------------------------------------------------------------------

def test_loads_like_a_real_checkpoint(tiny_gme_dir, gme):
    from umr.models.gme import GmeEmbedder

    assert isinstance(gme, GmeEmbedder)
    config = json.loads((tiny_gme_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    # the old weight names are mapped, every tensor loaded (only lm_head is left out)
    from safetensors.torch import load_file

    stored = load_file(str(tiny_gme_dir / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in stored and "visual.blocks.0.attn.qkv.weight" in stored
    assert torch.equal(gme.model.language_model.layers[0].self_attn.q_proj.weight,
                       stored["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(gme.model.visual.blocks[1].mlp.fc2.weight, stored["visual.blocks.1.mlp.fc2.weight"])
    assert not hasattr(gme.model, "lm_head")


def test_new_layout_checkpoint_loads(tmp_path, gme, images):
    from umr.testing import write_tiny_gme

    folder = write_tiny_gme(tmp_path / "v5", seed=0, legacy_layout=False)
    model = umr.load_model(folder)
    items = _mixed_items(images)[:4]
    assert np.abs(model.embed(items).vectors - gme.embed(items).vectors).max() <= TOL


def test_bfloat16_is_close(tiny_gme_dir, gme, images):
    fast = umr.load_model(tiny_gme_dir, dtype="bfloat16")
    assert fast.dtype == torch.bfloat16
    items = _mixed_items(images)[:5]
    a, b = fast.embed(items).vectors, gme.embed(items).vectors
    assert a.dtype == np.float32
    assert float((a * b).sum(axis=1).min()) > 0.95


def test_qwen2_5_vl_checkpoint(tmp_path, images):
    """A Qwen2.5-VL model (window attention vision tower) embeds through the same path."""
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from umr.testing import write_tiny_gme

    tiny = write_tiny_gme(tmp_path / "src", seed=1, legacy_layout=False)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>",
                                                            "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           window_size=56, fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    folder = tmp_path / "qwen25"
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((tiny / name).read_bytes())
    model = umr.load_model(folder)
    assert type(model).__name__ == "GmeEmbedder"
    items = _mixed_items(images)[:6]
    alone = np.stack([model.embed([item]).vectors[0] for item in items])
    together = model.embed(items, batch_size=6).vectors
    assert np.abs(alone - together).max() <= TOL
    assert model._fast_decoder
    model._fast_decoder = False  # transformers' own decoder on padded rows
    assert np.abs(model.embed(items, batch_size=6).vectors - together).max() <= TOL


# -- the command line: bad input -------------------------------------------------------------

def _good_lines(images):
    return [
        {"id": "g1", "text": "a dog on the beach"},
        {"id": "g2", "image": str(images["photo"])},
        {"id": "g3", "text": "a red car", "image": str(images["tall"])},
        {"id": "g4", "text": "find the car", "instruction": "Find an image.", "is_query": True},
    ]


@pytest.fixture
def bad_cases(tmp_path, bomb_png, images):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images["photo"].read_bytes()[:600])
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image\n")
    return {
        "missing": ('{"id": "m1", "image": "nowhere.png"}', "m1", "not found"),
        "truncated": (json.dumps({"id": "tr1", "image": str(truncated)}), "tr1", "cannot be"),
        "not-image": (json.dumps({"id": "ni1", "image": str(not_image)}), "ni1", "not an image"),
        "bomb": (json.dumps({"id": "b1", "image": str(bomb_png)}), "b1", "bomb"),
        "empty": ('{"id": "e1", "text": null}', "e1", "neither text nor image"),
        "bad-json": ('{"id": "j1", "text": "oops"', None, "invalid JSON"),
        "wrong-type": ('{"id": "w1", "text": 5}', "w1", "must be a string"),
    }


def _write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.mark.parametrize("case", ["missing", "truncated", "not-image", "bomb", "empty", "bad-json", "wrong-type"])
def test_cli_bad_item_stops_with_one_line(tmp_path, capsys, tiny_gme_dir, images, bad_cases, case):
    line, item_id, reason = bad_cases[case]
    lines = _good_lines(images)
    lines.insert(2, line)  # the bad item is on line 3
    items = _write_jsonl(tmp_path / "items.jsonl", lines)
    code = main(["embed", "--model", str(tiny_gme_dir), "--input", str(items),
                 "--output", str(tmp_path / "out.npy"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "line 3" in err and reason in err, err
    if item_id is not None:
        assert repr(item_id) in err, err
    assert not (tmp_path / "out.npy").exists()


def test_cli_skip_writes_the_rest(tmp_path, capsys, tiny_gme_dir, images, bad_cases):
    good = _good_lines(images)
    lines, expected_errors = [], []
    bad = list(bad_cases.values())
    for i, record in enumerate(good):
        lines.append(record)
        for line, item_id, reason in bad[2 * i: 2 * i + 2]:
            lines.append(line)
            expected_errors.append((len(lines), item_id, reason))
    items = _write_jsonl(tmp_path / "items.jsonl", lines)
    out = tmp_path / "out.npy"
    assert main(["embed", "--model", str(tiny_gme_dir), "--input", str(items), "--output", str(out),
                 "--on-error", "skip", "--no-progress"]) == 0
    vectors = np.load(out)
    assert vectors.shape == (len(good), 32)
    assert json.loads(out.with_suffix(".ids.json").read_text()) == [r["id"] for r in good]
    errors = [json.loads(x) for x in out.with_suffix(".errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(line, item_id) for line, item_id, _ in expected_errors]
    for error, (_, _, reason) in zip(errors, expected_errors):
        assert reason in error["error"]

    only_good = _write_jsonl(tmp_path / "good.jsonl", good)
    assert main(["embed", "--model", str(tiny_gme_dir), "--input", str(only_good),
                 "--output", str(tmp_path / "good.npy"), "--no-progress"]) == 0
    assert np.abs(np.load(tmp_path / "good.npy") - vectors).max() <= TOL
    capsys.readouterr()


def test_cli_embed_with_token_bounds(tmp_path, capsys, tiny_gme_dir, images):
    items = _write_jsonl(tmp_path / "items.jsonl", _good_lines(images))
    out = tmp_path / "o.npy"
    assert main(["embed", "--model", str(tiny_gme_dir), "--input", str(items), "--output", str(out),
                 "--min-image-tokens", "4", "--max-image-tokens", "16", "--no-progress"]) == 0
    small = umr.load_model(tiny_gme_dir, min_image_tokens=4, max_image_tokens=16)
    expected = small.embed([Item(text=r.get("text"), image=r.get("image"), instruction=r.get("instruction"),
                                 is_query=r.get("is_query", False)) for r in _good_lines(images)]).vectors
    assert np.abs(np.load(out) - expected).max() <= TOL
    capsys.readouterr()


def test_cli_gme_2b_offline_one_line(tmp_path, capsys, monkeypatch, images):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    items = _write_jsonl(tmp_path / "items.jsonl", _good_lines(images))
    code = main(["embed", "--model", "gme-2b", "--input", str(items), "--output", str(tmp_path / "o.npy")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "gme-2b" in err and "--model /path/to" in err, err


def test_load_folder_without_weights(tmp_path, tiny_gme_dir):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_gme_dir / "config.json").read_text())
    with pytest.raises(umr.ModelNotAvailable) as info:
        umr.load_model(folder)
    assert "\n" not in str(info.value)


def test_fast_decoder_and_patch_embed_match_transformers(tiny_gme_dir, gme, images):
    """The hand-written last decoder layer and matmul patch embedding equal transformers' modules."""
    from umr.models.qwen_vl_fast import LinearPatchEmbed

    assert gme._fast_decoder and isinstance(gme.model.visual.patch_embed.proj, LinearPatchEmbed)
    plain = umr.load_model(tiny_gme_dir)
    plain._fast_decoder = False
    items = _mixed_items(images)
    for batch_size in (1, 4, 11):
        a = gme.embed(items, batch_size=batch_size).vectors
        b = plain.embed(items, batch_size=batch_size).vectors
        assert np.abs(a - b).max() <= TOL


def test_checkpoint_missing_tensors_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from umr.testing import write_tiny_gme

    folder = write_tiny_gme(tmp_path / "cut", seed=0)
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(umr.ModelNotAvailable, match="lacks 1 tensor"):
        umr.load_model(folder)


def test_positions_are_sequential_not_3d_mrope(gme, images):
    """GME pools with plain positions 0..L-1; transformers' Qwen2VLModel.forward would use 3-D M-RoPE
    for image tokens, which gives a different vector (so the parity tests do test the positions)."""
    item = Item.candidate("a caption", image=images["photo"])
    p = gme.processor.prepare(item)
    ids = torch.tensor([p.input_ids])
    with torch.inference_mode():
        out = gme.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                        mm_token_type_ids=(ids == gme.image_token_id).long(),
                        pixel_values=torch.from_numpy(p.pixel_values),
                        image_grid_thw=torch.tensor([p.grid_thw])).last_hidden_state[0, -1]
    mrope = torch.nn.functional.normalize(out, dim=-1).numpy()
    ours = gme.embed([item]).vectors[0]
    assert np.abs(mrope - ours).max() > 1e-3


def test_cli_bad_token_bounds_one_line(tmp_path, capsys, tiny_gme_dir, images):
    items = _write_jsonl(tmp_path / "items.jsonl", _good_lines(images))
    code = main(["embed", "--model", str(tiny_gme_dir), "--input", str(items), "--output", str(tmp_path / "o.npy"),
                 "--min-image-tokens", "100", "--max-image-tokens", "10"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "min_image_tokens" in err, err


def test_one_bound_alone(tiny_gme_dir):
    only_max = umr.load_model(tiny_gme_dir, max_image_tokens=64)
    assert (only_max.processor.min_image_tokens, only_max.processor.max_image_tokens) == (64, 64)
    only_min = umr.load_model(tiny_gme_dir, min_image_tokens=2000)
    assert (only_min.processor.min_image_tokens, only_min.processor.max_image_tokens) == (2000, 2000)
    assert only_max.processor.num_image_tokens(1500, 1100) <= 64


def test_cost_estimate_is_the_real_sequence_length(tiny_gme_dir, tmp_path):
    """Batches are planned on the estimate; digits are one token each in Qwen2, so guesses undercount."""
    model = umr.load_model(tiny_gme_dir, max_image_tokens=16, min_image_tokens=4)
    Image.new("RGB", (300, 200), "red").save(tmp_path / "r.png")
    items = [Item(text="1234567890" * 50), Item(text="a dog", image=str(tmp_path / "r.png")),
             Item(image=str(tmp_path / "r.png")), Item(text="x " * 3000),
             Item(text="hello", is_query=True, instruction="Find it.")]
    for item in items:
        assert model._cost(item) == len(model.processor.prepare(item).input_ids)


def test_each_prompt_is_tokenised_once_per_call(tiny_gme_dir, images, monkeypatch):
    """The cost estimate's ids are the ones the forward pass uses: exact lengths, one tokeniser call per prompt."""
    model = umr.load_model(tiny_gme_dir)
    items = _mixed_items(images)
    calls = []
    tokenize = model.processor.tokenize
    monkeypatch.setattr(model.processor, "tokenize", lambda texts: calls.append(texts) or tokenize(texts))
    costs = [model.check(item) for item in items]
    assert costs == [len(model.processor.prepare(item).input_ids) for item in items]
    model.embed(items, batch_size=4)
    from umr.models.gme.processing_gme import build_prompt

    distinct = {build_prompt(item) for item in items}  # image-only candidates share one
    assert len(calls) == len({prompt for texts in calls for prompt in texts}) == len(distinct)
