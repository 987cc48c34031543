"""Qwen3-VL-Embedding backend: parity with an item-at-a-time reference, batches, MRL, bad input, CLI.

The reference (:class:`umr.verify.references.Qwen3VLReference`, which `umr verify` runs) follows ``Qwen3VLEmbedder`` (QwenLM/Qwen3-VL-Embedding) literally, one item at a
time: its conversation (instruction stripped, ``.`` appended unless it ends in punctuation, else
``Represent the user's input.``; image before text), ``fetch_image`` as qwen-vl-utils 0.0.14 does it
(RGBA pasted on white, other modes ``convert("RGB")``, ``smart_resize`` factor 32, PIL's default
filter), then transformers' own ``Qwen3VLProcessor`` (``apply_chat_template`` with the generation
prompt; ``truncation=True, max_length, padding=True, do_resize=False``, right padding; RGB images
left as they are, as 4.57.3 leaves them), then
``Qwen3VLModel(**inputs)`` and the last attended token, L2-normalised. umr's path shares none of it.
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
from umr.core.items import Item, ItemError
from umr.verify.references import Qwen3VLReference

TOL = 1e-5
DEFAULT_INSTRUCTION = "Represent the user's input."


# -- the reference (umr verify's, written apart from umr's fast path) -----------------------

ReferenceQwen3VL = Qwen3VLReference


# -- fixtures ----------------------------------------------------------------------------------

def _noise(width, height, mode="RGB", seed=0):
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 256, (height, width, 3), dtype=np.uint8)
    xx = np.mgrid[0:height, 0:width][1]
    base[..., 0] = (base[..., 0] // 4 + (xx * 255 // max(width, 1)) * 3 // 4).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    if mode in ("L", "LA"):
        image = image.convert("L")
    if mode in ("RGBA", "LA"):
        image = image.convert(mode)
        image.putalpha(Image.fromarray(rng.randint(0, 256, (height, width), dtype=np.uint8), "L"))
    if mode == "P":  # a palette image whose first colour is transparent
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        image.info["transparency"] = 0
    return image


@pytest.fixture(scope="module")
def q3(tiny_qwen3vl_dir):
    return umr.load_model(tiny_qwen3vl_dir)


@pytest.fixture(scope="module")
def ref(tiny_qwen3vl_dir):
    return ReferenceQwen3VL(tiny_qwen3vl_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3vl-images")
    specs = {"photo": (320, 240, "RGB"), "tall": (200, 480, "RGB"), "tiny": (17, 5, "RGB"),
             "one": (1, 1, "RGB"), "wide": (900, 30, "RGB"), "odd": (333, 97, "RGB"),
             "gray": (123, 77, "L"), "rgba": (150, 100, "RGBA"), "la": (64, 90, "LA"), "palette": (90, 160, "P")}
    paths = {}
    for i, (name, (w, h, mode)) in enumerate(specs.items()):
        path = folder / f"{name}.png"
        _noise(w, h, mode, seed=i).save(path)
        paths[name] = path
    jpeg = folder / "photo.jpg"
    _noise(257, 191, seed=42).save(jpeg, quality=90)
    paths["jpeg"] = jpeg
    return paths


def _check(model, ref, item: Item):
    ours = model.embed([item]).vectors[0]
    theirs = ref.embed(item)
    delta = float(np.abs(ours - theirs).max())
    assert delta <= TOL, f"{item.id}: max|delta| = {delta:.2e}"


# -- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["A dog running on the beach.", "x", "  spaced  out  ",
                                  "Wikipedia: the 2024 city of rivers, 42!", "中文 text é"])
def test_text_parity(q3, ref, text):
    _check(q3, ref, Item.candidate(text, id="t"))


@pytest.mark.parametrize("name", ["photo", "tall", "tiny", "one", "wide", "odd", "gray", "rgba", "la",
                                  "palette", "jpeg"])
def test_image_parity(q3, ref, images, name):
    _check(q3, ref, Item.candidate(image=images[name], id=name))


@pytest.mark.parametrize("name", ["photo", "wide", "palette", "rgba"])
def test_fused_parity(q3, ref, images, name):
    _check(q3, ref, Item.candidate("a red car on a bridge", image=images[name], id=name))


def test_pil_image_parity(q3, ref):
    _check(q3, ref, Item.candidate("what is this", image=_noise(333, 222, "RGBA", seed=7), id="pil"))


@pytest.mark.parametrize("instruction", [None, "", "   ", "Find an image that matches the given text",
                                         "Retrieve a Wikipedia passage that answers the question.",
                                         "  Which one?  ", "Find it:", "找到图片", "找到图片。"])
def test_query_instruction_parity(q3, ref, images, instruction):
    _check(q3, ref, Item.query("what kind of car is this?", instruction=instruction, id="q1"))
    _check(q3, ref, Item.query(image=images["photo"], instruction=instruction, id="q2"))
    _check(q3, ref, Item.query("what is in the picture", image=images["tall"], instruction=instruction, id="q3"))


def test_instruction_rules(q3):
    from umr.models.qwen3vl import embedding_messages

    def system(item):
        return embedding_messages(item)[0]["content"][0]["text"]

    assert system(Item.query("q", instruction="  Find it  ")) == "Find it."
    assert system(Item.query("q", instruction="Find it!")) == "Find it!"
    assert system(Item.query("q", instruction="   ")) == DEFAULT_INSTRUCTION
    assert system(Item.candidate("c")) == DEFAULT_INSTRUCTION
    # candidates never carry an instruction in umr: the reference's default applies
    told = q3.encode_candidates([Item(text="a car", instruction="Find an image.")])
    assert np.abs(told - q3.encode_candidates(["a car"])).max() <= TOL
    assert np.abs(q3.encode_queries(["a car"], instruction="Find an image.") - told).max() > 1e-3


def test_image_tokens_get_3d_positions(q3, images):
    """The rope index gives image tokens (t, h, w) positions and resumes text after max(h, w)."""
    p = q3.prepare(Item.candidate("after", image=images["photo"]))
    positions = q3._rope_positions(p)[:, 0]
    pads = [i for i, t in enumerate(p.input_ids) if t == q3.image_token_id]
    _, gh, gw = p.grids[0]
    start = pads[0]
    assert positions[:, start].tolist() == [start, start, start]
    assert positions[:, pads[-1]].tolist() == [start, start + gh // 2 - 1, start + gw // 2 - 1]
    assert positions[0, pads[-1] + 1] == start + max(gh, gw) // 2


def test_deepstack_matters(q3, images):
    """Without the DeepStack features the image vector changes (so parity does test them)."""
    item = Item.candidate(image=images["photo"])
    p = q3.prepare(item)
    lm = q3.model.language_model
    ids = torch.tensor([p.input_ids])
    with torch.inference_mode():
        embeds = lm.embed_tokens(ids)
        features = q3.model.get_image_features(torch.from_numpy(p.pixel_values),
                                               image_grid_thw=torch.tensor(p.grids))
        embeds[ids == q3.image_token_id] = torch.cat(list(features.pooler_output))
        hidden = lm(inputs_embeds=embeds, position_ids=q3._rope_positions(p)).last_hidden_state[0, -1]
    plain = torch.nn.functional.normalize(hidden, dim=-1).numpy()
    assert np.abs(plain - q3.embed([item]).vectors[0]).max() > 1e-3


def _positions_as_4_57(visual, grid):
    """Learned-position interpolation and rotary tables of one image as transformers 4.57.3 builds
    them (linspace-based bilinear resampling; (row, col) frequency lookup), in merge-block order."""
    _, h, w = grid
    side, m = visual.num_grid_per_side, visual.spatial_merge_size
    table = visual.pos_embed.weight.detach().view(side, side, -1)
    ys, xs = torch.linspace(0, side - 1, h), torch.linspace(0, side - 1, w)
    y0, x0 = ys.int(), xs.int()
    y1, x1 = (y0 + 1).clamp(max=side - 1), (x0 + 1).clamp(max=side - 1)
    dy, dx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    pos = ((1 - dy) * (1 - dx) * table[y0][:, x0] + (1 - dy) * dx * table[y0][:, x1]
           + dy * (1 - dx) * table[y1][:, x0] + dy * dx * table[y1][:, x1])
    blocks = lambda t: t.view(h // m, m, w // m, m, -1).permute(0, 2, 1, 3, 4).reshape(h * w, -1)  # noqa: E731
    quarter = visual.config.hidden_size // visual.config.num_heads // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, quarter, 2, dtype=torch.float) / quarter))
    rows = torch.arange(h)[:, None].expand(h, w).float()
    cols = torch.arange(w)[None, :].expand(h, w).float()
    angles = torch.cat([blocks(rows[..., None]) * inv_freq, blocks(cols[..., None]) * inv_freq], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)
    return blocks(pos), angles.cos(), angles.sin()


@pytest.mark.parametrize("grid", [(1, 2, 2), (1, 6, 10), (1, 10, 6), (1, 4, 22), (1, 16, 16)])
def test_vision_position_tables_match_transformers_4_57(q3, grid):
    """transformers 5.x rewrote the vision tower's position code; it equals 4.57.3's on any grid."""
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

    visual = q3.model.visual
    grid_thw = torch.tensor([grid])
    indices, weights = get_vision_interpolation_indices_and_weights(
        grid_thw, num_grid_per_side=visual.num_grid_per_side, mode="bilinear", align_corners=True,
        spatial_merge_size=visual.spatial_merge_size)
    with torch.no_grad():
        pos_v5 = (visual.pos_embed(indices) * weights[:, :, None]).sum(1)
        x = torch.zeros(grid[1] * grid[2], visual.config.hidden_size)
        cos_v5, sin_v5 = visual.rotary_pos_emb(x, get_vision_position_ids(grid_thw, visual.spatial_merge_size))
    pos, cos, sin = _positions_as_4_57(visual, grid)
    assert torch.allclose(pos_v5, pos, atol=1e-6)
    assert torch.allclose(cos_v5, cos, atol=1e-6) and torch.allclose(sin_v5, sin, atol=1e-6)


# -- truncation --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short(tiny_qwen3vl_dir):
    return umr.load_model(tiny_qwen3vl_dir, max_length=40)


@pytest.fixture(scope="module")
def ref_short(tiny_qwen3vl_dir):
    return ReferenceQwen3VL(tiny_qwen3vl_dir, max_length=40)


def test_truncated_text_parity(short, ref_short, images):
    long_text = " ".join(random.Random(3).choice("the of a dog cat image photo 2024".split()) for _ in range(200))
    ids = short.prepare(Item.candidate(long_text)).input_ids
    assert len(ids) == 40  # cut at max_length: the end of the prompt is gone, as in the reference
    _check(short, ref_short, Item.candidate(long_text, id="long"))
    _check(short, ref_short, Item.query(long_text, instruction="Find it", id="long-q"))
    # an image of 4 tokens fits; the text after it is cut
    _check(short, ref_short, Item.candidate(long_text, image=images["one"], id="long-fused"))


def test_truncation_cutting_image_tokens_is_refused(short, ref_short, images):
    item = Item.candidate("a caption", image=images["photo"], id="big")
    with pytest.raises(ValueError):  # transformers' processor refuses it
        ref_short.embed(item)
    result = short.embed([item, Item.candidate("fine", id="ok")], on_error="skip")
    assert list(result.indices) == [1]
    assert result.errors[0].item_id == "big" and "max_length=40" in result.errors[0].reason


def test_truncation_at_the_last_image_token(tiny_qwen3vl_dir, images):
    """A sequence cut right after its last image token pools that token (DeepStack in the last layer)."""
    model = umr.load_model(tiny_qwen3vl_dir)
    item = Item.candidate("some words after the image", image=images["one"])
    p = model.prepare(item)
    end = max(i for i, t in enumerate(p.input_ids) if t == model.image_token_id) + 1
    cut = umr.load_model(tiny_qwen3vl_dir, max_length=end)
    ref = ReferenceQwen3VL(tiny_qwen3vl_dir, max_length=end)
    assert cut.prepare(item).input_ids[-1] == cut.image_token_id
    _check(cut, ref, item)
    processed = [cut.prepare(item)]
    assert np.abs(cut.forward(processed, packed=True).numpy() - cut.forward(processed, packed=False).numpy()).max() < 1e-5


# -- image token bounds ------------------------------------------------------------------------

@pytest.mark.slow
def test_image_token_bounds_parity(tiny_qwen3vl_dir, images):
    small = umr.load_model(tiny_qwen3vl_dir, min_image_tokens=8, max_image_tokens=20)
    ref = ReferenceQwen3VL(tiny_qwen3vl_dir, min_pixels=8 * 1024, max_pixels=20 * 1024)
    for name in ("photo", "tiny", "odd", "one"):
        with Image.open(images[name]) as img:
            n = small.processor.num_image_tokens(*img.size)
        assert 8 <= n <= 20, (name, n)
        p = small.prepare(Item.candidate(image=images[name]))
        assert p.input_ids.count(small.image_token_id) == n
        _check(small, ref, Item.candidate("a caption", image=images[name], id=name))


def test_one_bound_alone_and_bad_bounds(tiny_qwen3vl_dir):
    only_max = umr.load_model(tiny_qwen3vl_dir, max_image_tokens=2)
    assert (only_max.processor.min_image_tokens, only_max.processor.max_image_tokens) == (2, 2)
    with pytest.raises(ValueError, match="min_image_tokens"):
        umr.load_model(tiny_qwen3vl_dir, min_image_tokens=100, max_image_tokens=10)


def test_extreme_aspect_ratio_is_an_item_error(q3, tmp_path):
    Image.new("RGB", (2010, 10), "red").save(tmp_path / "strip.png")
    result = q3.embed([Item(image=str(tmp_path / "strip.png"), id="strip"), Item(text="ok")], on_error="skip")
    assert list(result.indices) == [1] and "aspect ratio" in result.errors[0].reason


def test_vision_special_tokens_in_text_are_refused(q3):
    for text in ("see <|image_pad|> here", "a <|vision_start|> b", "<|video_pad|>"):
        with pytest.raises(ItemError, match="special tokens"):
            q3.embed([Item(text=text, id="s")])


def test_processor_serves_multi_image_conversations(q3, ref, images):
    """The shared processing (as the reranker will use it): two images and texts in one user turn
    give the ids and patches transformers' Qwen3-VL processor gives for the same conversation."""
    messages = [{"role": "system", "content": [{"type": "text", "text": "Judge it."}]},
                {"role": "user", "content": [{"type": "text", "text": "<Query>:"}, {"type": "image"},
                                             {"type": "text", "text": "a car"}, {"type": "text", "text": "\n<Doc>:"},
                                             {"type": "image"}]}]
    sources = [images["photo"], images["palette"]]
    ours = q3.processor.encode(messages, sources)
    prompt = ref.processor.apply_chat_template([messages], add_generation_prompt=True, tokenize=False)
    fetched = [ref.fetch_image(path) for path in sources]
    theirs = ref.processor(text=prompt, images=fetched, do_resize=False, do_convert_rgb=False, return_tensors="np")
    assert ours.input_ids == theirs["input_ids"][0].tolist()
    assert ours.grids == [tuple(g) for g in theirs["image_grid_thw"].tolist()]
    assert np.array_equal(ours.pixel_values, theirs["pixel_values"])


# -- transformers 4.57 vs 5.x colour conversion ---------------------------------------------------

def test_transparency_follows_qwen_vl_utils_not_transformers_5(q3, images):
    """4.57's pipeline (qwen-vl-utils, then a processor that only calls convert('RGB')) drops a palette
    image's transparency and pastes RGBA on white; transformers 5.x's convert_to_rgb composites every
    transparency onto white. umr follows 4.57."""
    from transformers.image_transforms import convert_to_rgb

    with Image.open(images["palette"]) as img:
        img.load()
        assert img.info.get("transparency") == 0
        ours = q3.processor.load_image(img)
        h, w = ours.height, ours.width
        expected = img.convert("RGB").resize((w, h))
        v5 = Image.fromarray(convert_to_rgb(img, return_numpy=True)).resize((w, h))
    assert np.array_equal(np.asarray(ours), np.asarray(expected))
    assert not np.array_equal(np.asarray(ours), np.asarray(v5))
    # even after fetch_image's convert("RGB"), PIL keeps the transparent colour, which 5.x would whiten
    assert ours.mode == "RGB" and "transparency" in expected.info
    assert not np.array_equal(np.asarray(convert_to_rgb(expected, return_numpy=True)), np.asarray(expected))
    with Image.open(images["rgba"]) as img:
        img.load()
        ours = q3.processor.load_image(img)
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img, mask=img.getchannel("A"))
    assert np.array_equal(np.asarray(ours), np.asarray(white.resize(ours.size)))


# -- batches -----------------------------------------------------------------------------------

def _mixed_items(images):
    return [
        Item.candidate("A dog running on the beach.", id="t1"),
        Item.candidate(image=images["photo"], id="i1"),
        Item.query("find the red car", image=images["tall"], instruction="Find a matching image", id="f1"),
        Item.candidate("x", id="t2"),
        Item.candidate(image=images["tiny"], id="i2"),
        Item.query("what is the tallest mountain in the city of rivers?", id="q1"),
        Item.candidate("a long caption " * 30, image=images["wide"], id="f2"),
        Item.candidate(image=images["gray"], id="i3"),
        Item.query(image=images["rgba"], instruction="Find a caption.", id="q2"),
        Item.candidate("one two three", image=images["palette"], id="f3"),
        Item.candidate("Wikipedia " * 60, id="t3"),
    ]


@pytest.mark.slow
def test_batch_invariance(q3, images):
    items = _mixed_items(images)
    alone = np.stack([q3.embed([item]).vectors[0] for item in items])
    rng = random.Random(0)
    worst = 0.0
    for batch_size in (2, 3, 5, 32):
        order = list(range(len(items)))
        rng.shuffle(order)
        result = q3.embed([items[i] for i in order], batch_size=batch_size)
        assert list(result.indices) == list(range(len(items)))
        worst = max(worst, float(np.abs(result.vectors - alone[order]).max()))
    assert worst <= TOL, worst


def test_packed_path_equals_transformers_forward(q3, images):
    """The packed decoder (chosen at load) equals transformers' Qwen3VLModel on padded rows, and the
    linear patch embedding equals the checkpoint's Conv3d."""
    from umr.models.qwen_vl_fast import LinearPatchEmbed

    assert q3.packed
    embed = q3.model.visual.patch_embed.proj
    assert isinstance(embed, LinearPatchEmbed)
    patches = torch.randn(7, 3, 2, 16, 16)
    with torch.no_grad():
        conv = torch.nn.functional.conv3d(patches, embed.weight, embed.bias, stride=(2, 16, 16))
        assert torch.allclose(embed(patches), conv, atol=1e-5)
    processed = [q3.prepare(item) for item in _mixed_items(images)]
    packed = torch.nn.functional.normalize(q3.forward(processed, packed=True), dim=-1)
    plain = torch.nn.functional.normalize(q3.forward(processed, packed=False), dim=-1)
    assert float((packed - plain).abs().max()) <= TOL


@pytest.mark.slow
def test_load_time_check_falls_back(tiny_qwen3vl_dir, monkeypatch, images):
    """If the packed path disagreed with transformers, the loader would use transformers' forward."""
    from umr.models import qwen_vl_fast

    monkeypatch.setattr(qwen_vl_fast, "rotate", lambda x, cos, sin: x)  # a broken fast path
    model = umr.load_model(tiny_qwen3vl_dir)
    assert not model.packed
    monkeypatch.undo()
    good = umr.load_model(tiny_qwen3vl_dir)
    items = _mixed_items(images)[:4]
    assert np.abs(model.embed(items).vectors - good.embed(items).vectors).max() <= TOL


def test_cost_is_the_real_sequence_length(q3, images):
    for item in _mixed_items(images):
        assert q3._cost(item) == len(q3.prepare(item).input_ids), item.id


def test_vectors_normalised_and_dim(q3, images):
    vectors = q3.embed(_mixed_items(images)).vectors
    assert vectors.dtype == np.float32 and vectors.shape[1] == q3.dim == 32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


# -- Matryoshka ----------------------------------------------------------------------------------

def test_mrl_dim_is_the_renormalised_prefix(tiny_qwen3vl_dir, q3, images):
    items = _mixed_items(images)[:6]
    full = q3.embed(items).vectors
    small = umr.load_model(tiny_qwen3vl_dir, dim=8)
    assert small.dim == 8 and small.full_dim == 32
    prefix = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert np.abs(small.embed(items).vectors - prefix).max() <= TOL
    with pytest.raises(ValueError, match="dim must be between 1 and 32"):
        umr.load_model(tiny_qwen3vl_dir, dim=64)


def test_dim_applies_to_any_family():
    full = umr.load_model("minilm")
    small = umr.load_model("minilm", dim=64)
    texts = ["a dog on the beach", "the tallest mountain"]
    a, b = full.encode_candidates(texts), small.encode_candidates(texts)
    assert b.shape == (2, 64)
    assert np.abs(b - a[:, :64] / np.linalg.norm(a[:, :64], axis=1, keepdims=True)).max() <= TOL


def test_index_at_one_dim_refuses_another(tmp_path, tiny_qwen3vl_dir):
    from umr.index.index import Index, ModelMismatch

    model = umr.load_model(tiny_qwen3vl_dir, dim=16)
    with Index.create(tmp_path / "idx", model) as index:
        index.add([Item.candidate("a dog", id="a"), Item.candidate("a cat", id="b")])
    with pytest.raises(ModelMismatch, match="dimension: 16 vs 32"):
        Index.open(tmp_path / "idx", model=umr.load_model(tiny_qwen3vl_dir))
    with Index.open(tmp_path / "idx", model=model) as index:
        assert index.search("a dog", k=1)[0].id == "a"


# -- loading and the registry ------------------------------------------------------------------

def test_registry_and_folder_detection(tiny_qwen3vl_dir, q3):
    from umr.models.qwen3vl import Qwen3VLEmbedder
    from umr.models.catalog import REGISTRY
    from umr.models.registry import detect_family

    assert isinstance(q3, Qwen3VLEmbedder)
    assert detect_family(tiny_qwen3vl_dir) == "qwen3vl"
    assert REGISTRY["qwen3-vl-embedding-2b"].source == "Qwen/Qwen3-VL-Embedding-2B"
    assert REGISTRY["qwen3-vl-embedding-8b"].source == "Qwen/Qwen3-VL-Embedding-8B"
    assert q3.dtype == torch.float32


def test_tiny_checkpoint_is_deterministic_and_has_answer_tokens(tmp_path, tiny_qwen3vl_dir):
    from transformers import AutoTokenizer

    from umr.testing import write_tiny_qwen3vl

    again = write_tiny_qwen3vl(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_qwen3vl_dir / name).read_bytes(), name
    tokenizer = AutoTokenizer.from_pretrained(str(again))
    assert [len(tokenizer(w)["input_ids"]) for w in ("yes", "no")] == [1, 1]


def test_new_config_layout_gives_the_same_vectors(tmp_path, q3, tiny_qwen3vl_dir, images):
    from umr.testing import write_tiny_qwen3vl

    legacy = json.loads((tiny_qwen3vl_dir / "config.json").read_text())
    assert "rope_scaling" in legacy["text_config"] and "rope_parameters" not in legacy["text_config"]
    model = umr.load_model(write_tiny_qwen3vl(tmp_path / "v5", seed=0, legacy_layout=False))
    items = _mixed_items(images)[:4]
    assert np.abs(model.embed(items).vectors - q3.embed(items).vectors).max() <= TOL


def test_item_with_neither_text_nor_image_is_refused(q3):
    result = q3.embed([Item(id="empty"), Item(text="", id="blank"), Item(text="ok", id="ok")], on_error="skip")
    assert list(result.indices) == [2]  # umr's one rule: a blank text is no text
    assert [e.item_id for e in result.errors] == ["empty", "blank"]
    assert all("neither text nor image" in e.reason for e in result.errors)


def test_bfloat16_is_close(tiny_qwen3vl_dir, q3, images):
    fast = umr.load_model(tiny_qwen3vl_dir, dtype="bfloat16")
    assert fast.dtype == torch.bfloat16
    items = _mixed_items(images)[:5]
    assert float((fast.embed(items).vectors * q3.embed(items).vectors).sum(axis=1).min()) > 0.95


def test_checkpoint_missing_tensors_is_refused(tmp_path, tiny_qwen3vl_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "cut"
    shutil.copytree(tiny_qwen3vl_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    del state[next(k for k in state if k.endswith("layers.1.mlp.up_proj.weight"))]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(umr.ModelNotAvailable, match="lacks 1 tensor"):
        umr.load_model(folder)


# -- the command line --------------------------------------------------------------------------

def _write_jsonl(path, lines):
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_cli_embed_with_options(tmp_path, capsys, tiny_qwen3vl_dir, images):
    lines = [{"id": "a", "text": "a dog on the beach"}, {"id": "b", "image": str(images["photo"])},
             {"id": "c", "text": "a red car " * 40, "image": str(images["tall"])},
             {"id": "d", "text": "find the car", "instruction": "Find an image", "is_query": True}]
    items = _write_jsonl(tmp_path / "items.jsonl", lines)
    out = tmp_path / "o.npy"
    assert main(["embed", "--model", str(tiny_qwen3vl_dir), "--input", str(items), "--output", str(out),
                 "--min-image-tokens", "8", "--max-image-tokens", "20", "--max-length", "60", "--dim", "16",
                 "--dtype", "float32", "--no-progress"]) == 0
    model = umr.load_model(tiny_qwen3vl_dir, min_image_tokens=8, max_image_tokens=20, max_length=60, dim=16)
    expected = model.embed([Item(text=r.get("text"), image=r.get("image"), instruction=r.get("instruction"),
                                 is_query=r.get("is_query", False)) for r in lines]).vectors
    got = np.load(out)
    assert got.shape == (4, 16) and np.abs(got - expected).max() <= TOL
    assert "dim 16" in capsys.readouterr().out


def test_cli_max_length_for_a_family_without_one(tmp_path, capsys):
    items = _write_jsonl(tmp_path / "items.jsonl", [{"id": "a", "text": "hello"}])
    code = main(["embed", "--model", "minilm", "--input", str(items), "--output", str(tmp_path / "o.npy"),
                 "--max-length", "10"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--max-length" in err, err


def test_cli_short_name_offline_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    items = _write_jsonl(tmp_path / "items.jsonl", [{"id": "a", "text": "hello"}])
    code = main(["embed", "--model", "qwen3-vl-embedding-2b", "--input", str(items),
                 "--output", str(tmp_path / "o.npy")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "qwen3-vl-embedding-2b" in err, err
