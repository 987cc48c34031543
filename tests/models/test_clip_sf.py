"""CLIP-SF (UniIR) and plain CLIP / SigLIP backends on tiny random checkpoints.

The references are :mod:`umr.verify.references.clip_sf` (what ``umr verify`` runs): UniIR's
``CLIPScoreFusion.encode_multimodal_input`` (``src/models/uniir_clip/clip_scorefusion/clip_sf.py``)
re-done directly on the ``.pth`` state dict, in OpenAI CLIP's own layout (``clip/model.py``:
``visual.conv1``, ``transformer.resblocks.N.attn`` with packed ``in_proj_weight``, ``x @ proj``),
with OpenAI's torchvision preprocessing redone in PIL, and UniIR's query text
``format_string(f"{instruction} {query_txt}")``; for plain CLIP / SigLIP, transformers' own
models and PIL image processors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import umr
from umr.cli import main
from umr.models.clip_sf import ClipSfEmbedder, item_text, uniir_format
from umr.testing import write_tiny_clip, write_tiny_uniir_clip_sf
from umr.models.registry import ModelNotAvailable
from umr.core.items import Item, ItemError
from umr.verify.references.clip_sf import (TransformersClipReference, UniIRClipSfReference,
                                           reference_format_string)

TOL = 1e-5


def _noise(width, height, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-images")
    paths = {}
    # "odd": 35x32 -> centre crop offset 1.5, rounded up by torchvision (OpenAI/UniIR), down by transformers
    for name, (w, h, seed) in {"photo": (61, 40, 1), "tall": (30, 91, 2), "tiny": (5, 7, 3),
                               "odd": (35, 32, 5)}.items():
        paths[name] = folder / f"{name}.png"
        _noise(w, h, seed).save(paths[name])
    paths["gray"] = folder / "gray.jpg"
    _noise(50, 50, 4).convert("L").save(paths["gray"])
    return paths


@pytest.fixture(scope="module")
def uniir_dir(tmp_path_factory):
    return write_tiny_uniir_clip_sf(tmp_path_factory.mktemp("tiny-uniir") / "tiny-clip-sf", seed=0)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "tiny-clip", kind="clip", seed=3)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-siglip") / "tiny-siglip", kind="siglip", seed=4)


@pytest.fixture(scope="module")
def sf(uniir_dir):
    return umr.load_model(uniir_dir)


# -- UniIR's text handling ---------------------------------------------------------------------

@pytest.mark.parametrize("text", ["a dog", '"quoted text"', "what is it?", "", None, "  spaced\r out  ",
                                  "Wow!", "x", "trailing period."])
def test_format_string_matches_uniir(text):
    assert uniir_format(text) == reference_format_string(text)


def test_instructions_are_applied_as_uniir_applies_them():
    instr = "retrieve an image that matches the caption"
    # query text = format_string(f"{prompt} {query_txt}")  (mbeir_dataset.py)
    assert item_text(Item.query("a dog on grass", instruction=instr)) == reference_format_string(f"{instr} a dog on grass")
    # an image-only query still gets the instruction as its text, so it is fused with the image
    assert item_text(Item.query(image="x.png", instruction=instr)) == reference_format_string(f"{instr} ")
    assert item_text(Item.query(image="x.png")) == ""
    # candidates never carry instructions (umr drops them), their text is formatted too
    assert item_text(Item.candidate("a red car")) == "A red car."


def test_text_is_cleaned_as_openai_clip_tokenize_cleans_it(sf):
    # clip.tokenize unescapes HTML twice and collapses whitespace; transformers' tokenizer does not
    for escaped in ("Tom &amp; Jerry", "Tom &amp;amp; Jerry", "Tom  &#38;\tJerry"):
        assert item_text(Item.candidate(escaped)) == "Tom & Jerry."
    assert item_text(Item.candidate("Tom &amp; Jerry"), uniir=False) == "Tom &amp; Jerry"  # only UniIR text
    # cleaning follows format_string: a quote that only appears after unescaping is kept, as UniIR keeps it
    assert item_text(Item.candidate("&quot;hi&quot;")) == '"hi".'
    # the tiny vocabulary has no "&" (it reads as <|endoftext|>), so compare through an escaped letter
    a, b = sf.encode_candidates(["Tom &amp;#74;erry on  TV", "Tom Jerry on TV"])
    assert np.abs(a - b).max() <= TOL


# -- the UniIR reference (umr.verify.references.clip_sf) ----------------------------------------

@pytest.fixture(scope="module")
def ref(uniir_dir):
    return UniIRClipSfReference(uniir_dir, uniir_dir / "clip_sf_tiny.pth")


ITEMS = {
    "text": lambda im: Item.candidate("a dog on the beach"),
    "image": lambda im: Item.candidate(image=im["photo"]),
    "tall-image": lambda im: Item.candidate(image=im["tall"]),
    "gray-image": lambda im: Item.candidate(image=im["gray"]),
    "tiny-image": lambda im: Item.candidate(image=im["tiny"]),
    "odd-crop-image": lambda im: Item.candidate(image=im["odd"]),
    "fused": lambda im: Item.candidate("a red car", im["photo"]),
    "query": lambda im: Item.query("a photo of a cat"),
    "query-instr": lambda im: Item.query("a photo of a cat", instruction="retrieve an image of the caption"),
    "image-query-instr": lambda im: Item.query(image=im["tall"], instruction="find a caption for the image"),
    "fused-query-instr": lambda im: Item.query("but it is red", im["photo"], instruction="find a similar image"),
    "html-entities": lambda im: Item.candidate("a &#100;og &amp;#111;n\t the  beach"),
    "html-entities-query-instr": lambda im: Item.query("fish &amp; chips", instruction="find  &#39;food&#39;"),
}


@pytest.mark.parametrize("name", list(ITEMS))
def test_uniir_parity(sf, ref, images, name):
    item = ITEMS[name](images)
    ours = sf.embed([item]).vectors[0]
    theirs = ref.embed(item)
    assert np.abs(ours - theirs).max() <= TOL, np.abs(ours - theirs).max()


def test_fused_is_the_normalised_sum_of_the_towers(sf, images):
    img = Image.open(images["photo"]).convert("RGB")
    with torch.no_grad():
        t = sf.encode_texts(["A red car."])[0]
        i = sf.encode_images(sf.processor.transform(img)[None])[0]
    expected = F.normalize(t + i, dim=-1).numpy()
    got = sf.embed([Item.candidate("a red car", images["photo"])]).vectors[0]
    assert np.abs(got - expected).max() <= TOL
    # and not the sum of normalised parts
    other = F.normalize(F.normalize(t, dim=-1) + F.normalize(i, dim=-1), dim=-1).numpy()
    assert np.abs(got - other).max() > 1e-3


# -- UniIR checkpoint names ------------------------------------------------------------------------

def reference_uniir_names(n_vision_layers: int, n_text_layers: int) -> list[str]:
    """Tensor names in UniIR's clip_sf_large.pth (``torch.load(path)["model"]``).

    Source: UniIR ``src/models/uniir_clip/clip_scorefusion/clip_sf.py`` — ``CLIPScoreFusion``
    holds OpenAI's model as ``self.clip_model`` (``clip.load``), and ``src/common/utils.py``
    loads ``torch.load(checkpoint_path)["model"]`` into it with ``load_state_dict`` (strict) —
    and OpenAI ``clip/model.py``: ``CLIP`` = ``visual`` (``VisionTransformer``: ``conv1``,
    ``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer.resblocks``,
    ``ln_post``, ``proj``), ``transformer.resblocks``, ``token_embedding``,
    ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``; each
    ``ResidualAttentionBlock`` = ``attn`` (``nn.MultiheadAttention``: ``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), ``ln_1``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_2``. The causal
    ``attn_mask`` is a plain attribute, not saved.
    """
    block = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
             "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
             "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias"]
    names = ["positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
             "ln_final.weight", "ln_final.bias", "visual.class_embedding", "visual.positional_embedding",
             "visual.proj", "visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_pre.bias",
             "visual.ln_post.weight", "visual.ln_post.bias"]
    names += [f"transformer.resblocks.{i}.{b}" for i in range(n_text_layers) for b in block]
    names += [f"visual.transformer.resblocks.{i}.{b}" for i in range(n_vision_layers) for b in block]
    return sorted("clip_model." + n for n in names)


def _shapes(cfg):
    """OpenAI CLIP shapes for a (shrunk) config: width, layers, patch, grid, context, vocab, embed."""
    t, v, e = cfg["text_config"], cfg["vision_config"], cfg["projection_dim"]
    tw, vw = t["hidden_size"], v["hidden_size"]
    grid = v["image_size"] // v["patch_size"]
    shapes = {"positional_embedding": (t["max_position_embeddings"], tw), "text_projection": (tw, e),
              "logit_scale": (), "token_embedding.weight": (t["vocab_size"], tw), "ln_final.weight": (tw,),
              "ln_final.bias": (tw,), "visual.class_embedding": (vw,),
              "visual.positional_embedding": (grid * grid + 1, vw), "visual.proj": (vw, e),
              "visual.conv1.weight": (vw, 3, v["patch_size"], v["patch_size"]), "visual.ln_pre.weight": (vw,),
              "visual.ln_pre.bias": (vw,), "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,)}
    for prefix, w, inter, n in (("transformer.resblocks", tw, t["intermediate_size"], t["num_hidden_layers"]),
                                ("visual.transformer.resblocks", vw, v["intermediate_size"], v["num_hidden_layers"])):
        for i in range(n):
            p = f"{prefix}.{i}."
            shapes.update({p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,),
                           p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
                           p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "ln_2.weight": (w,),
                           p + "ln_2.bias": (w,), p + "mlp.c_fc.weight": (inter, w), p + "mlp.c_fc.bias": (inter,),
                           p + "mlp.c_proj.weight": (w, inter), p + "mlp.c_proj.bias": (w,)})
    return shapes


def _uniir_folder(tmp_path, clip_dir, state, name="clip_sf_large.pth"):
    import shutil

    folder = tmp_path / "uniir"
    shutil.copytree(clip_dir, folder)
    torch.save({"model": state, "optimizer": {"lr": torch.tensor(1e-5)}, "epoch": 20}, str(folder / name))
    return folder


def test_uniir_checkpoint_names_load_without_missing_or_unexpected(tmp_path, clip_dir, uniir_dir, images):
    cfg = json.loads((clip_dir / "config.json").read_text())
    names = reference_uniir_names(cfg["vision_config"]["num_hidden_layers"], cfg["text_config"]["num_hidden_layers"])
    written = torch.load(str(uniir_dir / "clip_sf_tiny.pth"), weights_only=True)["model"]
    assert sorted(written) == names  # the fixture writes exactly UniIR's names
    gen = torch.Generator().manual_seed(5)
    state = {f"clip_model.{k}": 0.2 * torch.randn(shape, generator=gen) for k, shape in _shapes(cfg).items()}
    assert sorted(state) == names
    folder = _uniir_folder(tmp_path, clip_dir, state)
    model = umr.load_model(folder)
    assert isinstance(model, ClipSfEmbedder)
    hf = model.model.state_dict()
    assert torch.equal(hf["visual_projection.weight"], state["clip_model.visual.proj"].T)
    w = state["clip_model.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(hf["text_model.encoder.layers.1.self_attn.k_proj.weight"], w[w.shape[0] // 3: 2 * w.shape[0] // 3])
    # the .pth, not the folder's own weights, is what embeds
    plain = ClipSfEmbedder.from_pretrained(clip_dir)
    a = model.encode_candidates([Item.candidate("a dog")])
    b = plain.encode_candidates([Item.candidate("a dog")])
    assert np.abs(a - b).max() > 1e-3


def test_uniir_checkpoint_with_wrong_names_is_refused(tmp_path, clip_dir):
    cfg = json.loads((clip_dir / "config.json").read_text())
    state = {f"clip_model.{k}": torch.zeros(shape) for k, shape in _shapes(cfg).items()}
    state["clip_model.visual.attnpool.c_proj.weight"] = torch.zeros(2, 2)
    folder = _uniir_folder(tmp_path, clip_dir, state)
    with pytest.raises(ValueError, match="unknown tensors.*attnpool"):
        umr.load_model(folder)
    del state["clip_model.visual.attnpool.c_proj.weight"], state["clip_model.ln_final.bias"]
    torch.save({"model": state}, str(folder / "clip_sf_large.pth"))
    with pytest.raises(ValueError, match="missing.*final_layer_norm.bias"):
        umr.load_model(folder)


def test_checkpoint_option_and_pickled_extras(tmp_path, uniir_dir, sf):
    """UniIR's train.py saves {"model", "optimizer", "scheduler", "config" (OmegaConf), "epoch", "scaler"}."""
    import shutil

    item = [Item.candidate("a dog")]
    clip_dir = tmp_path / "base"
    shutil.copytree(uniir_dir, clip_dir, ignore=shutil.ignore_patterns("*.pth"))
    explicit = ClipSfEmbedder.from_pretrained(clip_dir, checkpoint=uniir_dir / "clip_sf_tiny.pth")
    assert np.abs(explicit.embed(item).vectors - sf.embed(item).vectors).max() <= TOL
    state = torch.load(str(uniir_dir / "clip_sf_tiny.pth"), weights_only=True)["model"]
    pth = tmp_path / "with_config.pth"
    _Opaque.built = 0
    torch.save({"model": state, "config": _Opaque(), "epoch": 3, "scheduler": {"T_max": 10},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.98)}]}}, str(pth))
    # the config object is neither imported nor run: its class is replaced by an inert stand-in
    loaded = ClipSfEmbedder.from_pretrained(clip_dir, checkpoint=pth)
    assert _Opaque.built == 0  # never unpickled for real
    assert np.abs(loaded.embed(item).vectors - sf.embed(item).vectors).max() <= TOL
    trusted = ClipSfEmbedder.from_pretrained(clip_dir, checkpoint=pth, trust_checkpoint=True)
    assert _Opaque.built == 1  # a full pickle load does run it
    assert np.abs(trusted.embed(item).vectors - sf.embed(item).vectors).max() <= TOL
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="trust_checkpoint=True"):
        ClipSfEmbedder.from_pretrained(clip_dir, checkpoint=garbage)


class _Kind(__import__("enum").Enum):
    ANY = 1


class _Opaque:
    """Stands in for the OmegaConf DictConfig UniIR pickles next to the weights."""

    built = 0

    def __init__(self):
        self.content = {"model": {"name": "CLIPScoreFusion"}, "kind": _Kind.ANY}

    def __setstate__(self, state):  # runs when really unpickled
        type(self).built += 1
        self.__dict__.update(state)


def test_clip_sf_large_needs_its_checkpoint(monkeypatch, tmp_path, clip_dir):
    spec = {s.name: s for s in umr.list_models()}
    assert {"mm-embed", "clip-sf-large", "clip-vit-b32", "clip-vit-l14", "siglip-base"} <= set(spec)
    assert spec["clip-sf-large"].defaults["checkpoint"].endswith("CLIP_SF/clip_sf_large.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelNotAvailable, match="pass checkpoint="):
        ClipSfEmbedder.from_pretrained(clip_dir, checkpoint="TIGER-Lab/UniIR/checkpoint/CLIP_SF/clip_sf_large.pth")
    with pytest.raises(ModelNotAvailable):
        umr.load_model("clip-sf-large")


# -- plain CLIP and SigLIP --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_plain_clip_and_siglip_parity(kind, clip_dir, siglip_dir, images):
    folder = clip_dir if kind == "clip" else siglip_dir
    model = umr.load_model(folder)
    assert isinstance(model, ClipSfEmbedder) and model.kind == kind
    reference = TransformersClipReference(folder)
    for text, image in (("a dog on the beach", None), (None, images["photo"]), (None, images["odd"]),
                        ("a red car", images["gray"])):
        ours = model.embed([Item.candidate(text, image)]).vectors[0]
        theirs = reference.embed(Item.candidate(text, image))
        assert np.abs(ours - theirs).max() <= TOL, (kind, text, image)


# -- batching, bad input, CLI -------------------------------------------------------------------------

def _mixed(images):
    return [Item.candidate("a dog on the beach", id="t"), Item.candidate(image=images["photo"], id="i"),
            Item.query("a cat", instruction="find an image", id="q"), Item.candidate("red car", images["tall"], id="f"),
            Item.query(image=images["gray"], instruction="find a caption", id="qi"),
            Item.candidate("a long text about a bird sitting in a tree by the river at night", id="t2"),
            Item.candidate(image=images["tiny"], id="i2")]


@pytest.mark.parametrize("which", ["uniir", "siglip"])
def test_batch_invariance(which, sf, siglip_dir, images):
    model = sf if which == "uniir" else umr.load_model(siglip_dir)
    items = _mixed(images)
    alone = np.stack([model.embed([it]).vectors[0] for it in items])
    for batch_size in (2, 3, 7):
        assert np.abs(model.embed(items, batch_size=batch_size).vectors - alone).max() <= TOL
    assert np.allclose(np.linalg.norm(alone, axis=1), 1, atol=1e-5)


def test_bad_images_name_the_item(sf, tmp_path, bomb_png, images):
    broken = tmp_path / "broken.png"
    broken.write_bytes(images["photo"].read_bytes()[:400])
    for image, reason in ((tmp_path / "nope.png", "not found"), (bomb_png, "bomb"), (broken, "cannot be")):
        with pytest.raises(ItemError, match=reason) as info:
            sf.embed([Item.candidate("x", id="ok"), Item.candidate("y", image, id="bad-one")])
        assert info.value.item_id == "bad-one" and info.value.index == 1
    with pytest.raises(ItemError, match="blank"):
        sf.embed([Item.candidate("   ", id="blank")])


def test_cli_embed_and_skip(tmp_path, capsys, uniir_dir, sf, images):
    broken = tmp_path / "broken.png"
    broken.write_bytes(images["photo"].read_bytes()[:400])
    lines = [{"id": "g1", "text": "a dog"}, {"id": "b1", "image": str(tmp_path / "missing.png")},
             {"id": "g2", "image": str(images["photo"]), "instruction": "find a caption", "is_query": True},
             {"id": "b2", "image": str(broken)}, {"id": "g3", "text": "red car", "image": str(images["tall"])}]
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.npy"
    assert main(["embed", "--model", str(uniir_dir), "--input", str(items), "--output", str(out),
                 "--on-error", "skip", "--no-progress"]) == 0
    assert json.loads(out.with_suffix(".ids.json").read_text()) == ["g1", "g2", "g3"]
    errors = [json.loads(x) for x in out.with_suffix(".errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(2, "b1"), (4, "b2")]
    good = [Item(text=x.get("text"), image=x.get("image"), instruction=x.get("instruction"),
                 is_query=x.get("is_query", False)) for x in lines if x["id"].startswith("g")]
    assert np.abs(np.load(out) - sf.embed(good).vectors).max() <= TOL
    capsys.readouterr()
    code = main(["embed", "--model", str(uniir_dir), "--input", str(items), "--output", str(tmp_path / "o.npy"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "line 2" in err and "'b1'" in err and err.count("\n") == 1


def test_tiny_builders_are_deterministic(tmp_path, uniir_dir):
    again = write_tiny_uniir_clip_sf(tmp_path / "again", seed=0)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (again / name).read_bytes() == (uniir_dir / name).read_bytes(), name
    a = torch.load(str(again / "clip_sf_tiny.pth"), weights_only=True)["model"]
    b = torch.load(str(uniir_dir / "clip_sf_tiny.pth"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_checkpoint_is_a_one_line_cli_error(tmp_path, capsys, clip_dir):
    cfg = json.loads((clip_dir / "config.json").read_text())
    state = {f"clip_model.{k}": torch.zeros(shape) for k, shape in _shapes(cfg).items()}
    del state["clip_model.visual.proj"]
    folder = _uniir_folder(tmp_path, clip_dir, state)
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "text": "x"}\n')
    code = main(["embed", "--model", str(folder), "--input", str(items), "--output", str(tmp_path / "o.npy"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "visual_projection.weight" in err, err


def test_checkpoint_false_ignores_a_pth_in_the_folder(uniir_dir):
    plain = ClipSfEmbedder.from_pretrained(uniir_dir, checkpoint=False)
    from transformers import CLIPModel

    base = CLIPModel.from_pretrained(str(uniir_dir))
    assert torch.equal(plain.model.visual_projection.weight, base.visual_projection.weight)
    spec = {s.name: s for s in umr.list_models()}
    assert spec["clip-vit-l14"].defaults == {"checkpoint": False}


@pytest.mark.parametrize("folder", ["clip_dir", "siglip_dir"])
def test_bf16_stays_within_cosine_0999_of_float32(folder, images, request):
    """CLIP-SF's bf16 path (opt-in: measured on tiny random towers only, not the real checkpoints)."""
    path = request.getfixturevalue(folder)
    items = [Item.candidate("a red square on a field"), Item.candidate(image=str(images["photo"])),
             Item.candidate("two dogs", image=str(images["tall"])),
             Item.query("what is shown?", image=str(images["odd"]))]
    exact = umr.load_model(path).embed(items).vectors
    model = umr.load_model(path, dtype="bfloat16")
    fast = model.embed(items).vectors
    assert model.dtype is torch.bfloat16 and model.identity.options["dtype"] == "bfloat16"
    assert 0.999 <= float((exact * fast).sum(1).min()) and np.abs(exact - fast).max() > 0
