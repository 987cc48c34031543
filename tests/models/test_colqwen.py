"""ColQwen2 / ColQwen2.5: parity with colpali-engine's inference, MaxSim, loading the published layout.

colpali-engine 0.3.18 cannot be installed beside umr's pinned packages (it needs peft<0.21 and
torchvision), so parity is checked against ``umr.verify.references.colqwen``: colpali-engine's inference
written out with plain transformers/torch/PIL calls and no umr code. That reference was run once
against the real colpali-engine 0.3.18 (transformers 5.25, torch 2.13, torchvision 0.28) on the
tiny checkpoints of ``write_tiny_colqwen`` (22 images of every PIL mode and odd sizes, 5 queries,
2 texts): max |difference| 0.0 for every token vector and every MaxSim score, both versions.
umr against colpali-engine directly, same inputs: token vectors within 1.1e-6, MaxSim within 3.1e-5
(scores up to 86), pixels and token ids identical.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

import umr
from umr.models.colqwen import ColQwenEmbedder
from umr.models.colqwen.processing_colqwen import QUERY_AUGMENTATION_COUNT
from umr.models.multivector import MultiVectorEmbedder, maxsim
from umr.models.registry import REGISTRY, ModelNotAvailable, UnsupportedOption, detect_family
from umr.core.items import Item, ItemError
from umr.testing import write_tiny_colqwen

from umr.verify.references.colqwen import ColQwenReference, maxsim_pairwise

TOKEN_TOL = 1e-5
SCORE_TOL = 1e-4
QUERIES = ["hello world", "What is the revenue of the company in 2024?", "x",
           "Wikipedia: the 2024 city of rivers, 42!", "a much longer query about documents and tables " * 3]
TEXTS = ["A page about rivers and cities.", "Quarterly revenue table: 2023 vs 2024."]


def _noise(width, height, seed):
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    base[..., 0] = (base[..., 0] // 4 + (xx * 255 // max(width, 1)) * 3 // 4).astype(np.uint8)
    base[..., 1] = (base[..., 1] // 2 + (yy * 255 // max(height, 1)) // 2).astype(np.uint8)
    return Image.fromarray(base, "RGB")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Every PIL mode (8-bit range: umr scales wider samples on purpose) and odd sizes."""
    folder = tmp_path_factory.mktemp("colqwen-images")
    rgba = _noise(150, 100, 12).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.random.RandomState(13).randint(0, 256, (100, 150), dtype=np.uint8)))
    keyed = _noise(97, 61, 20)
    keyed.paste((10, 20, 30), (5, 5, 40, 30))
    gray = _noise(97, 61, 21).convert("L")
    gray.paste(77, (10, 10, 50, 40))
    specs = {
        "rgb-123x77.png": (_noise(123, 77, 1), {}),
        "tiny-17x5.png": (_noise(17, 5, 2), {}),
        "one-1x1.png": (_noise(1, 1, 3), {}),
        "wide-900x30.png": (_noise(900, 30, 4), {}),
        "page-425x550.jpg": (_noise(425, 550, 7), {}),
        "mode-1.png": (_noise(97, 61, 8).convert("1"), {}),
        "mode-L.png": (_noise(97, 61, 9).convert("L"), {}),
        "mode-LA.png": (_noise(97, 61, 10).convert("LA"), {}),
        "mode-P.png": (_noise(97, 61, 11).convert("P", palette=Image.Palette.ADAPTIVE, colors=32), {}),
        "mode-RGBA.png": (rgba, {}),
        "mode-CMYK.jpg": (_noise(97, 61, 14).convert("CMYK"), {}),
        "mode-YCbCr.tiff": (_noise(97, 61, 15).convert("YCbCr"), {}),
        "mode-I16.png": (Image.fromarray((np.random.RandomState(16).rand(61, 97) * 255).astype(np.uint16)), {}),
        "mode-I32.tiff": (Image.fromarray((np.random.RandomState(22).rand(61, 97) * 255).astype(np.int32)), {}),
        "mode-F.tiff": (Image.fromarray((np.random.RandomState(17).rand(61, 97) * 200 + 30).astype(np.float32)), {}),
        "mode-P-transparent.gif": (_noise(97, 61, 18).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
                                   {"transparency": 0}),
        "mode-P-transparent.png": (_noise(97, 61, 19).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
                                   {"transparency": 3}),
        "mode-RGB-tRNS.png": (keyed, {"transparency": (10, 20, 30)}),
        "mode-L-tRNS.png": (gray, {"transparency": 77}),
    }
    paths = {}
    for name, (image, options) in specs.items():
        image.save(folder / name, **options)
        paths[name] = folder / name
    return paths


@pytest.fixture(scope="module", params=["2.5", "2"])
def version(request):
    return request.param


@pytest.fixture(scope="module")
def tiny(version, tmp_path_factory):
    return write_tiny_colqwen(tmp_path_factory.mktemp(f"colqwen{version}") / "adapter", version, seed=0)


@pytest.fixture(scope="module")
def model(tiny):
    return umr.load_model(tiny)


@pytest.fixture(scope="module")
def ref(tiny):
    return ColQwenReference(tiny)


def _worst(ours, theirs) -> float:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == np.float32
    return max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))


# -- parity ------------------------------------------------------------------------------------------

def test_query_parity(model, ref):
    ours = model.encode_queries(QUERIES)
    assert _worst(ours, ref.queries(QUERIES)) <= TOKEN_TOL
    hello = model.processor.tokenizer("hello world")["input_ids"]
    assert len(ours[0]) == len(hello) + QUERY_AUGMENTATION_COUNT  # the text and its 10 augmentation tokens


def test_text_candidate_parity(model, ref):
    assert _worst(model.encode_candidates(TEXTS), ref.texts(TEXTS)) <= TOKEN_TOL


def test_image_parity_every_mode_and_size(model, ref, images):
    ours = model.encode_candidates([Item.candidate(image=path, id=name) for name, path in images.items()])
    theirs = [ref.images([Image.open(path)])[0] for path in images.values()]
    worst = {name: float(np.abs(a - b).max()) for name, a, b in zip(images, ours, theirs)}
    assert max(worst.values()) <= TOKEN_TOL, worst


def test_pixels_and_ids_equal_the_reference(model, ref, images):
    """The resize (torch's bicubic antialias on uint8), colour-key compositing and fused
    normalisation give the reference's patches bit for bit."""
    for name in ("mode-RGB-tRNS.png", "mode-P-transparent.gif", "wide-900x30.png", "tiny-17x5.png"):
        processed = model.processor.prepare(Item.candidate(image=images[name]))
        patches, grid = ref.image_patches(Image.open(images[name]))
        assert processed.grid_thw == grid
        assert np.array_equal(processed.pixel_values, patches.numpy()), name


def test_maxsim_parity(model, ref, images):
    queries = model.encode_queries(QUERIES)
    candidates = model.encode_candidates([Item.candidate(image=p) for p in list(images.values())[:6]] + TEXTS)
    ours = model.score(queries, candidates)
    theirs = maxsim_pairwise(ref.queries(QUERIES), [ref.images([Image.open(p)])[0] for p in list(images.values())[:6]]
                             + ref.texts(TEXTS))
    assert ours.shape == (len(QUERIES), 8) and ours.dtype == np.float32
    assert float(np.abs(ours - theirs).max()) <= SCORE_TOL


def test_instruction_is_a_prefix(model, ref):
    ours = model.encode_queries(["revenue 2024"], instruction="Find the page")
    assert _worst(ours, ref.queries(["Find the page revenue 2024"])) <= TOKEN_TOL


def test_batch_invariance(model, images):
    items = ([Item.query(q) for q in QUERIES] + [Item.candidate(t) for t in TEXTS]
             + [Item.candidate(image=p) for p in images.values()])
    alone = [model.embed([item]).vectors[0] for item in items]
    rng = random.Random(0)
    for batch_size in (2, 3, 7, 64):
        order = list(range(len(items)))
        rng.shuffle(order)
        result = model.embed([items[i] for i in order], batch_size=batch_size)
        assert _worst(result.vectors, [alone[i] for i in order]) <= TOKEN_TOL


def test_vectors_are_unit_rows_without_padding(model, images):
    vectors = model.encode_candidates([Item.candidate(image=images["rgb-123x77.png"]), "short text"])
    assert [v.shape[1] for v in vectors] == [128, 128]
    assert len(vectors[0]) == model.processor.cost(Item.candidate(image=images["rgb-123x77.png"]))
    for v in vectors:
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_bfloat16_is_close(tiny, model, images):
    bf16 = umr.load_model(tiny, dtype="bfloat16")
    items = [Item.query(QUERIES[1]), Item.candidate(image=images["rgb-123x77.png"])]
    for a, b in zip(model.embed(items).vectors, bf16.embed(items).vectors):
        assert float((a * b).sum(axis=1).min()) > 0.98


# -- MaxSim -----------------------------------------------------------------------------------------

def test_maxsim_is_exact_and_blockwise():
    rng = np.random.RandomState(0)
    queries = [rng.randn(n, 16).astype(np.float32) for n in (1, 5, 9)]
    candidates = [rng.randn(n, 16).astype(np.float32) for n in (1, 3, 40, 7, 2)]
    brute = np.array([[max((q @ d.T).max(axis=1).sum(), -1e9) for d in candidates] for q in queries])
    assert np.allclose(maxsim(queries, candidates), brute, atol=1e-4)
    # blocks of a few candidates, and one too big (the block grows to the longest candidate)
    assert np.allclose(maxsim(queries, candidates, block_tokens=8), brute, atol=1e-4)
    assert maxsim(queries, []).shape == (3, 0)


def test_maxsim_never_takes_padding_as_a_match():
    """All products negative: the best match is negative (colpali-engine's zero padding would give 0)."""
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    short, long = np.array([[-1.0, 0.0]], dtype=np.float32), np.array([[-0.5, 0.5], [-0.9, 0.1]], dtype=np.float32)
    assert maxsim([query], [short, long]).tolist() == [[-1.0, -0.5]]


# -- loading --------------------------------------------------------------------------------------

def test_detected_by_architecture_not_as_gme(tiny):
    """A ColQwen2 base is a ``qwen2_vl`` model: it used to load silently as a single-vector GME."""
    base = tiny.with_name(tiny.name + "-base")
    assert detect_family(base) == "colqwen"
    assert detect_family(tiny) == "colqwen"  # the adapter, by its base's config
    assert isinstance(umr.load_model(base), ColQwenEmbedder)


def test_the_adapter_is_applied(tiny, model):
    base = umr.load_model(tiny.with_name(tiny.name + "-base"))
    assert isinstance(model, MultiVectorEmbedder) and model.dim == 128
    a, b = model.encode_queries(["hello world"])[0], base.encode_queries(["hello world"])[0]
    assert a.shape == b.shape and float(np.abs(a - b).max()) > 1e-2
    assert model.identity.options["base_files"] and model.identity.key() != base.identity.key()


def test_short_names():
    assert REGISTRY["colqwen2.5-v0.2"].family == "colqwen"
    assert REGISTRY["colqwen2.5-v0.2"].source == "vidore/colqwen2.5-v0.2"
    assert REGISTRY["colqwen2-v1.0"].source == "vidore/colqwen2-v1.0"


def test_short_name_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailable) as info:
        umr.load_model("colqwen2.5-v0.2")
    assert "\n" not in str(info.value) and "vidore/colqwen2.5-v0.2" in str(info.value)


def test_base_found_in_the_hub_cache_by_id(tmp_path, monkeypatch, model, version):
    """The published adapter names its base by hub id; the base is read from the local cache."""
    snapshot = tmp_path / "hub" / "models--vidore--colqwen2.5-base" / "snapshots" / "0123abcd"
    adapter = write_tiny_colqwen(tmp_path / "colqwen2.5-v0.2", version, seed=0, base_folder=snapshot,
                                 base_name="vidore/colqwen2.5-base")
    (tmp_path / "hub" / "models--vidore--colqwen2.5-base" / "refs").mkdir()
    (tmp_path / "hub" / "models--vidore--colqwen2.5-base" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = umr.load_model(adapter)
    assert isinstance(loaded, ColQwenEmbedder) and loaded.base == snapshot
    assert _worst(loaded.encode_queries(QUERIES[:2]), model.encode_queries(QUERIES[:2])) == 0.0


def test_missing_base_is_one_line(tmp_path, monkeypatch):
    adapter = write_tiny_colqwen(tmp_path / "adapter", "2.5", seed=0, base_name="vidore/colqwen2.5-base")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelNotAvailable) as info:
        umr.load_model(adapter)
    assert "vidore/colqwen2.5-base" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("change, message", [({"use_dora": True}, "use_dora"),
                                             ({"peft_type": "IA3"}, "LoRA adapters only"),
                                             ({"alpha_pattern": {"q_proj": 4}}, "alpha_pattern")])
def test_adapters_it_cannot_apply_are_refused(tmp_path, change, message):
    adapter = write_tiny_colqwen(tmp_path / "adapter", "2.5", seed=0)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ModelNotAvailable, match=message):
        umr.load_model(adapter)


def test_dim_option_is_refused(tiny):
    with pytest.raises(UnsupportedOption):
        umr.load_model(tiny, dim=64)


def test_tiny_checkpoint_is_deterministic(tmp_path):
    a = write_tiny_colqwen(tmp_path / "a", "2", seed=3)
    b = write_tiny_colqwen(tmp_path / "b", "2", seed=3)
    for name in ("adapter_model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    base_a, base_b = a.with_name("a-base"), b.with_name("b-base")
    assert (base_a / "model.safetensors").read_bytes() == (base_b / "model.safetensors").read_bytes()
    assert json.loads((base_a / "config.json").read_text())["architectures"] == ["ColQwen2"]
    assert not (a / "config.json").exists()  # the published adapters ship none


# -- bad items ------------------------------------------------------------------------------------

def test_bad_items_are_their_own_errors(model, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    extreme = tmp_path / "row.png"
    Image.new("L", (3000, 2)).save(extreme)
    items = [Item.candidate(image=images["rgb-123x77.png"], id="ok-image"),
             Item.candidate("text and", image=images["rgb-123x77.png"], id="fused"),
             Item.candidate(image=broken, id="broken"),
             Item.candidate(image=extreme, id="extreme"),
             Item.query("what is <|image_pad|> here", id="pad-in-text"),
             Item.query("fine", id="ok-query")]
    result = model.embed(items, on_error="skip")
    assert [items[i].id for i in result.indices] == ["ok-image", "ok-query"]
    reasons = {e.item_id: e.reason for e in result.errors}
    assert set(reasons) == {"fused", "broken", "extreme", "pad-in-text"}
    assert "not both" in reasons["fused"] and "aspect ratio" in reasons["extreme"]
    assert all("\n" not in r for r in reasons.values())
    with pytest.raises(ItemError):
        model.embed(items)


def test_the_image_zoo_is_embedded_or_reported(model, image_zoo):
    """Every odd file embeds or is its own one-line error; colpali-engine's image processor refuses
    aspect ratios over 200, and so does umr (one item, not the batch)."""
    folder, expected = image_zoo
    extreme = {"row-1x4000.png", "column-4000x1.png", "row-1x600000.png", "column-600000x1.png"}
    items = [Item.candidate(image=folder / name, id=name) for name in expected]
    result = model.embed(items, on_error="skip")
    wanted_ok = {n for n, e in expected.items() if e == "ok"} - extreme
    assert {items[i].id for i in result.indices} == wanted_ok
    assert {e.item_id for e in result.errors} == {n for n, e in expected.items() if e == "error"} | extreme
    assert all(np.isfinite(v).all() for v in result.vectors)


def test_embed_writes_one_token_matrix_per_id(tiny, model, images, tmp_path, capsys):
    """``umr embed`` with a multi-vector model: a .npz of one (n_tokens, 128) float32 array per id,
    equal to the API's vectors; bad items are skipped with their line; a .npy output is refused."""
    from umr.cli import main

    lines = [{"id": "q1", "text": "hello world", "is_query": True},
             {"id": "file", "image": str(images["rgb-123x77.png"])},  # np.savez's own keyword
             {"id": "dir/page 2", "image": str(images["mode-P-transparent.gif"])},
             {"id": "bad", "image": str(tmp_path / "missing.png")},
             {"text": "no id here"}]
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["embed", "--input", str(source), "--model", str(tiny), "--output", str(tmp_path / "v.npz"),
                 "--on-error", "skip", "--no-progress"]) == 0
    assert "4 token matrices" in capsys.readouterr().out
    with np.load(tmp_path / "v.npz") as stored:
        assert stored.files == ["q1", "file", "dir/page 2", "line-5"]
        expected = [model.encode_queries(["hello world"])[0],
                    *model.encode_candidates([Item(image=images["rgb-123x77.png"]),
                                              Item(image=images["mode-P-transparent.gif"]), "no id here"])]
        for key, want in zip(stored.files, expected):
            assert stored[key].dtype == np.float32 and stored[key].shape == want.shape
            assert float(np.abs(stored[key] - want).max()) <= TOKEN_TOL
    errors = [json.loads(line) for line in (tmp_path / "v.errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["line"]) for e in errors] == [("bad", 4)]
    assert main(["embed", "--input", str(source), "--model", str(tiny), "--output", str(tmp_path / "v.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "late-interaction" in err and "v.npz" in err and len(err.splitlines()) == 1
    source.write_text(json.dumps({"id": "a", "text": "x"}) + "\n" + json.dumps({"id": "a", "text": "y"}) + "\n")
    assert main(["embed", "--input", str(source), "--model", str(tiny), "--output", str(tmp_path / "w.npz")]) == 2
    assert "appears twice" in capsys.readouterr().err and not (tmp_path / "w.npz").exists()


def test_single_vector_commands_refuse_in_one_line(tiny):
    """Commands that take single vectors only (eval, mine, serve, synth) refuse a late-interaction
    model in one line, naming the command."""
    import argparse

    from umr.cli.common import UsageError, load_model_from_args

    args = argparse.Namespace(model=str(tiny), device="cpu", dtype=None, command="eval")
    with pytest.raises(UsageError) as refused:
        load_model_from_args(args)
    assert "late-interaction" in str(refused.value) and "umr eval" in str(refused.value)
    assert "\n" not in str(refused.value)
