"""MM-Embed backend: reference semantics on tiny random weights, checkpoint names, CLI, bad input.

The reference (:mod:`umr.verify.references.mmembed`, the loop ``umr verify`` runs) re-does
MM-Embed's forward the way ``nvidia/MM-Embed``'s ``modeling_nvmmembed.py`` (``NVMMEmbedModel.encode``
/ ``forward``) does, with separate code: transformers' own LLaVA-NeXT PIL image processor (keeping the global patch, as
``global_image_patch_only`` does), transformers' ``CLIPVisionModel`` and ``MistralModel``
(given a padding-only 4D mask, as NV-Embed's ``BidirectionalMistralModel`` builds it), and
NV-Embed's latent-attention pooling written out with einsum. umr's path shares none of it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import umr
from umr.cli import main
from umr.models.mmembed import MMEmbedEmbedder, build_prompt
from umr.testing import write_tiny_mmembed
from umr.core.items import Item, ItemError
from umr.verify.references.mmembed import (MMEmbedReference, independent_latent_attention,
                                           reference_instruction_length, reference_tokenizer)

TOL = 1e-5


def _noise(width, height, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_mmembed(tmp_path_factory.mktemp("tiny-mmembed") / "tiny-mm-embed", seed=0)


@pytest.fixture(scope="module")
def mm(tiny_dir):
    return umr.load_model(tiny_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mm-images")
    paths = {}
    for name, (w, h, seed) in {"photo": (60, 40, 1), "tall": (30, 90, 2), "tiny": (5, 7, 3)}.items():
        paths[name] = folder / f"{name}.png"
        _noise(w, h, seed).save(paths[name])
    gray = folder / "gray.jpg"
    _noise(50, 50, 4).convert("L").save(gray)
    paths["gray"] = gray
    return paths


@pytest.fixture(scope="module")
def ref(tiny_dir):
    return MMEmbedReference(tiny_dir)


def _check(mm, ref, item: Item):
    ours = mm.embed([item]).vectors[0]
    theirs = ref.embed(item)
    assert ours.shape == theirs.shape == (mm.dim,)
    assert np.abs(ours - theirs).max() <= TOL, np.abs(ours - theirs).max()


# -- reference semantics ------------------------------------------------------------------------

def test_prompts_follow_the_reference_templates():
    assert build_prompt(Item.query("red car", "x.png", instruction="Find it.")) == \
        "Instruct: Find it.\nQuery: <image>\nred car"
    assert build_prompt(Item.query("red car", "x.png")) == "Query: <image>\nred car"
    assert build_prompt(Item.query("red car", instruction="Find it.")) == "Instruct: Find it.\nQuery: red car"
    assert build_prompt(Item.candidate("red car", "x.png")) == "<image>\nred car"
    assert build_prompt(Item.candidate("red car")) == "red car"
    assert build_prompt(Item.candidate(image="x.png")) == "<image>\n"
    assert build_prompt(Item.query(image="x.png", instruction="Find it.")) == "Instruct: Find it.\nQuery: <image>\n"


@pytest.mark.parametrize("make", [
    lambda im: Item.candidate("a dog on the beach"),
    lambda im: Item.candidate(image=im["photo"]),
    lambda im: Item.candidate("a red car", im["tall"]),
    lambda im: Item.candidate(image=im["gray"]),
    lambda im: Item.candidate(image=im["tiny"]),
    lambda im: Item.query("what is this?"),
    lambda im: Item.query("what is this?", instruction="Retrieve a passage that answers the question."),
    lambda im: Item.query(image=im["photo"], instruction="Find a caption for the image."),
    lambda im: Item.query("same color, but a truck", im["tall"], instruction="Find a similar image."),
    lambda im: Item.query("what bird is this?", im["photo"]),
    lambda im: Item.candidate("a dog <pad> on the beach"),
    lambda im: Item.candidate("Question list\nQuery: what is it", im["photo"]),
    lambda im: Item.query("Question list\nQuery: what is it", im["tall"]),
], ids=["text", "image", "fused", "grayscale", "tiny-image", "query", "query-instr", "image-query-instr",
        "fused-query-instr", "fused-query", "literal-pad", "image-in-instruction-head",
        "query-image-in-instruction-head"])
def test_parity_with_reference(mm, ref, images, make):
    _check(mm, ref, make(images))


def test_instruction_is_masked_from_pooling_not_from_attention(mm, tiny_dir):
    mm_dir = tiny_dir
    instruction = "Retrieve a wikipedia passage."
    with_instr = Item.query("a dog", instruction=instruction)
    proc = mm.processor
    p = proc.prepare(with_instr)
    inputs, attention, pool = mm.input_embeddings([p])
    n_instr = reference_instruction_length(reference_tokenizer(mm_dir), build_prompt(with_instr), 0)
    assert p.instruction_length == n_instr
    assert attention[0].tolist() == [1] * len(p.input_ids)  # every token is attended to ...
    assert pool[0].tolist() == [0] * n_instr + [1] * (len(p.input_ids) - n_instr)  # ... but not pooled
    # the instruction still shapes the pooled tokens through attention
    hidden = mm.model.language_model(inputs, attention)
    tail = proc._ids("\nQuery: a dog")
    alone_ids = [proc.bos_id] + tail + [proc.eos_id]
    alone = mm.model.language_model(mm.model.language_model.embed_tokens(torch.tensor([alone_ids])),
                                    torch.ones(1, len(alone_ids), dtype=torch.long))
    assert (hidden[0, -1] - alone[0, -1]).abs().max() > 1e-3
    # and the vector is the masked mean over the non-instruction positions only
    states = mm.model.latent_attention_model.token_states(hidden)[0]
    expected = torch.nn.functional.normalize(states[n_instr:].mean(0), dim=-1)
    got = torch.as_tensor(mm.embed([with_instr]).vectors[0])
    assert (got - expected).abs().max() <= TOL
    # a candidate has nothing masked
    assert proc.prepare(Item.candidate("a dog")).instruction_length == 0


def test_literal_pad_token_is_embedded_as_eos_like_the_reference(mm):
    # the reference embeds the tokenizer's <pad> (32001, past NV-Embed's rows) as </s> (2), not <unk> (0)
    p = mm.processor
    pad_id = mm.model.settings.pad_token_id
    assert pad_id in p.tokenize("hello <pad>") and pad_id >= mm.model.language_model.embed_tokens.num_embeddings
    pad, eos, unk = mm.encode_candidates(["hello <pad>", "hello </s>", "hello <unk>"])
    assert np.abs(pad - eos).max() <= TOL
    assert np.abs(pad - unk).max() > 1e-3


def test_image_inside_the_instruction_head_follows_the_reference_rule(mm, images, tiny_dir):
    # reference calculate_instruction_length: len(tokenizer(head)) + (576 - 1) when "<image>" is in the
    # head; 576 is the real model's patch count (24 x 24), its image spans 577 positions (+ image-newline),
    # so the rule adds (image positions - 2) = 575 there, and 16 - 1 = 15 for the tiny 56/14 tower
    p = mm.processor
    assert p.image_tokens == 17
    item = Item.candidate("Question list\nQuery: what is it", images["photo"])
    head = "<image>\nQuestion list"
    assert build_prompt(item).split("\nQuery: ")[0] == head
    tokenizer = reference_tokenizer(tiny_dir)
    assert p.prepare(item).instruction_length == len(tokenizer(head)["input_ids"]) + 15 \
        == reference_instruction_length(tokenizer, build_prompt(item), 16)
    # a real-size processor adds 575
    real = type(p)(p.tokenizer, image_token_id=p.image_token_id, image_tokens=577)
    assert real.instruction_length(build_prompt(item)) == len(tokenizer(head)["input_ids"]) + 575
    # no image in the head (an instructed query): nothing added
    query = Item.query("what is it", images["photo"], instruction="Find it.")
    assert p.prepare(query).instruction_length == len(tokenizer("Instruct: Find it.")["input_ids"])


def test_instruction_that_fills_the_truncated_sequence_is_refused(tiny_dir):
    short = umr.load_model(tiny_dir, max_length=24)
    instruction = "retrieve a passage that answers this question about the river and the mountain city"
    item = Item.query("what is it?", instruction=instruction, id="long-instr")
    with pytest.raises(ItemError, match="leaves no tokens to pool.*larger max_length") as info:
        short.processor.prepare(item)
    assert info.value.item_id == "long-instr"
    result = short.embed([Item.candidate("a dog", id="ok"), item], on_error="skip")
    assert result.indices.tolist() == [0] and [e.item_id for e in result.errors] == ["long-instr"]
    assert not np.isnan(result.vectors).any()
    # one token left to pool is still embedded
    fits = Item.query("what is it?", instruction="Find it.", id="fits")
    n = short.processor.instruction_length(build_prompt(fits))
    tight = umr.load_model(tiny_dir, max_length=n + 1)
    vec = tight.embed([fits]).vectors
    assert not np.isnan(vec).any()


@pytest.mark.parametrize("make", [
    lambda im: Item.candidate("the river city " * 20),
    lambda im: Item.candidate("the river city " * 20, im["photo"]),
    lambda im: Item.query("what is the river city " * 10, instruction="Find the passage that answers it."),
    lambda im: Item.query("what is the river city " * 10, im["tall"], instruction="Find it."),
], ids=["long-text", "long-fused", "long-query-instr", "long-fused-query-instr"])
def test_truncation_matches_the_reference(tiny_dir, images, make):
    item = make(images)
    short = umr.load_model(tiny_dir, max_length=24)
    reference = MMEmbedReference(tiny_dir, max_length=24)
    assert len(reference.tokenize(build_prompt(item))) == 24  # the reference really truncates here
    _check(short, reference, item)


def test_attention_is_bidirectional(mm):
    llm = mm.model.language_model
    torch.manual_seed(0)
    x = torch.randn(1, 6, llm.settings.hidden_size)
    mask = torch.ones(1, 6, dtype=torch.long)
    base = llm(x, mask)
    changed = x.clone()
    changed[0, 5] += 1.0  # change the LAST token
    after = llm(changed, mask)
    assert (after[0, 0] - base[0, 0]).abs().max() > 1e-4  # ... and the FIRST token's state moves
    # padding, however, is invisible
    padded = torch.cat([x, torch.randn(1, 3, x.shape[-1])], dim=1)
    out = llm(padded, torch.tensor([[1] * 6 + [0] * 3]))
    assert (out[0, :6] - base[0]).abs().max() <= TOL


def test_latent_attention_matches_independent_implementation(mm, tiny_dir):
    from safetensors.torch import load_file

    state = load_file(str(tiny_dir / "model.safetensors"))
    cfg = json.loads((tiny_dir / "config.json").read_text())["retriever_config"]["latent_attention_config"]
    torch.manual_seed(1)
    hidden = torch.randn(3, 7, mm.model.settings.text.hidden_size)
    pool = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0]])
    ours = mm.model.latent_attention_model(hidden, pool)
    theirs = torch.nn.functional.normalize(independent_latent_attention(state, cfg, hidden, pool), dim=-1)
    assert (ours - theirs).abs().max() <= TOL


def test_global_patch_preprocessing(mm, ref, images):
    img = Image.open(images["photo"]).convert("RGB")
    ours = mm.processor.pixel_values(img)
    theirs = ref.image_processor(img, return_tensors="pt")["pixel_values"][0, 0]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-5


# -- the real checkpoint's parameter names ---------------------------------------------------------

def reference_checkpoint_names(n_vision_layers: int, n_llm_layers: int) -> list[str]:
    """The tensor names in nvidia/MM-Embed's safetensors, written out from its modeling code.

    Source: ``modeling_nvmmembed.py`` of nvidia/MM-Embed. ``NVMMEmbedModel`` subclasses
    transformers 4.43's ``LlavaNextForConditionalGeneration`` — so ``vision_tower`` (a
    ``CLIPVisionModel``: ``vision_model.embeddings/pre_layrnorm/encoder/post_layernorm``),
    ``multi_modal_projector.linear_1/linear_2`` and ``image_newline`` — and replaces
    ``language_model`` by NV-Embed-v1's ``embedding_model`` (``BidirectionalMistralModel``, a
    ``MistralModel``: ``embed_tokens``, ``layers.*``, ``norm``; no ``lm_head``) and adds NV-Embed's
    ``latent_attention_model`` (``LatentAttentionModel`` in NV-Embed's ``modeling_nvembed.py``:
    ``cross_attend_blocks`` = [PreNorm(Attention(to_q, to_kv, to_out), norm, norm_context),
    PreNorm(FeedForward(net = Linear, GEGLU, Linear), norm)] and ``latents``). sglang's
    ``nvmmembed.py`` loads the same checkpoint by these names (``language_model`` ->
    ``embedding_model``; ``vision_tower``, ``multi_modal_projector``, ``image_newline`` skipped).
    """
    names = ["image_newline",
             "multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
             "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias",
             "language_model.embed_tokens.weight", "language_model.norm.weight",
             "latent_attention_model.latents",
             "latent_attention_model.cross_attend_blocks.0.norm.weight",
             "latent_attention_model.cross_attend_blocks.0.norm.bias",
             "latent_attention_model.cross_attend_blocks.0.norm_context.weight",
             "latent_attention_model.cross_attend_blocks.0.norm_context.bias",
             "latent_attention_model.cross_attend_blocks.0.fn.to_q.weight",
             "latent_attention_model.cross_attend_blocks.0.fn.to_kv.weight",
             "latent_attention_model.cross_attend_blocks.0.fn.to_out.weight",
             "latent_attention_model.cross_attend_blocks.1.norm.weight",
             "latent_attention_model.cross_attend_blocks.1.norm.bias",
             "latent_attention_model.cross_attend_blocks.1.fn.net.0.weight",
             "latent_attention_model.cross_attend_blocks.1.fn.net.0.bias",
             "latent_attention_model.cross_attend_blocks.1.fn.net.2.weight",
             "latent_attention_model.cross_attend_blocks.1.fn.net.2.bias"]
    v = "vision_tower.vision_model."
    names += [v + "embeddings.class_embedding", v + "embeddings.patch_embedding.weight",
              v + "embeddings.position_embedding.weight", v + "pre_layrnorm.weight", v + "pre_layrnorm.bias",
              v + "post_layernorm.weight", v + "post_layernorm.bias"]
    for i in range(n_vision_layers):
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
            names += [f"{v}encoder.layers.{i}.{part}.weight", f"{v}encoder.layers.{i}.{part}.bias"]
    for i in range(n_llm_layers):
        names += [f"language_model.layers.{i}.{part}.weight" for part in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")]
    return sorted(names)


def test_real_checkpoint_names_load_without_missing_or_unexpected(tmp_path, tiny_dir, images):
    import shutil

    from safetensors.torch import load_file, save_file

    cfg = json.loads((tiny_dir / "config.json").read_text())
    names = reference_checkpoint_names(cfg["vision_config"]["num_hidden_layers"],
                                       cfg["retriever_config"]["text_config"]["num_hidden_layers"])
    tiny_state = load_file(str(tiny_dir / "model.safetensors"))
    assert sorted(tiny_state) == names  # the fixture writes exactly the real names
    # a checkpoint with the real names, built without umr's modules, in two shards with an index
    gen = torch.Generator().manual_seed(7)
    state = {k: 0.2 * torch.randn(v.shape, generator=gen) for k, v in tiny_state.items()}
    state["vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]  # an old buffer
    folder = tmp_path / "sharded"
    folder.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(tiny_dir / f, folder / f)
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for shard, shard_keys in shards.items():
        save_file({k: state[k].contiguous() for k in shard_keys}, str(folder / shard))
        weight_map.update({k: shard for k in shard_keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = umr.load_model(folder)
    assert isinstance(model, MMEmbedEmbedder)
    loaded = model.model.state_dict()
    assert sorted(loaded) == names
    for k in names:
        assert torch.equal(loaded[k], state[k]), k
    assert model.encode_candidates([Item.candidate("a dog", images["photo"])]).shape == (1, model.dim)


def test_wrong_names_are_refused(tmp_path, tiny_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "renamed"
    shutil.copytree(tiny_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    state["lm_head.weight"] = state.pop("language_model.norm.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"1 missing .*language_model.norm.weight.*1 unexpected .*lm_head"):
        umr.load_model(folder)


def test_settings_without_inline_retriever_config_use_nv_embed_sizes_from_weights(tmp_path, tiny_dir, mm, images):
    """The real folder names NV-Embed-v1 as ``retriever`` without carrying its config."""
    import shutil

    folder = tmp_path / "no-inline"
    shutil.copytree(tiny_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    inline = cfg.pop("retriever_config")
    (folder / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "nv-embed").mkdir()
    (tmp_path / "nv-embed" / "config.json").write_text(json.dumps(inline))
    item = Item.query("a dog", images["photo"], instruction="Find an image.")
    expected = mm.embed([item]).vectors
    # the retriever's config given as an option ...
    via_option = umr.load_model(folder, retriever_config=str(tmp_path / "nv-embed"))
    assert np.abs(via_option.embed([item]).vectors - expected).max() <= TOL
    # ... or nowhere: NV-Embed-v1's published config, sizes read off the weights (heads must then
    # be NV-Embed-v1's, so only the shapes are checked here)
    from umr.models.mmembed.modeling_mmembed import read_settings

    s = read_settings(folder)
    assert (s.text.hidden_size, s.text.num_hidden_layers, s.text.vocab_size) == (32, 2, cfg["image_token_index"])
    assert (s.latent.num_latents_value, s.latent.latent_dim) == (8, 32)


# -- batching, loading, bad input ---------------------------------------------------------------

def _mixed_items(images):
    return [
        Item.candidate("a dog on the beach", id="t1"),
        Item.candidate(image=images["photo"], id="i1"),
        Item.query("what is this?", instruction="Retrieve a passage.", id="q1"),
        Item.candidate("a red car", images["tall"], id="f1"),
        Item.query(image=images["gray"], instruction="Find a caption.", id="q2"),
        Item.candidate("a much longer text about a bird sitting on a tree near the river", id="t2"),
        Item.query("same but red", images["tiny"], id="q3"),
    ]


def test_batch_invariance(mm, images):
    items = _mixed_items(images)
    alone = np.stack([mm.embed([item]).vectors[0] for item in items])
    for batch_size in (2, 3, 7):
        together = mm.embed(items, batch_size=batch_size).vectors
        assert np.abs(alone - together).max() <= TOL
    assert np.allclose(np.linalg.norm(alone, axis=1), 1, atol=1e-5)


def test_load_model_by_folder_and_determinism(tmp_path, tiny_dir, mm, images):
    assert isinstance(mm, MMEmbedEmbedder) and mm.dim == 32
    again = write_tiny_mmembed(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert "mm-embed" in {s.name for s in umr.list_models()}


def test_bad_images_name_the_item(mm, tmp_path, bomb_png, images):
    broken = tmp_path / "broken.png"
    broken.write_bytes(images["photo"].read_bytes()[:500])
    for image, reason in ((tmp_path / "nope.png", "not found"), (bomb_png, "bomb"), (broken, "cannot be")):
        with pytest.raises(ItemError, match=reason) as info:
            mm.embed([Item.candidate("x", id="ok"), Item.candidate("y", image, id="bad-one")])
        assert info.value.item_id == "bad-one" and info.value.index == 1
    with pytest.raises(ItemError, match="reserves"):
        mm.embed([Item.candidate("a <image> tag", id="tag")])
    result = mm.embed([Item.candidate("x", id="ok"), Item.candidate("y", broken, id="bad-one")], on_error="skip")
    assert result.indices.tolist() == [0] and [e.item_id for e in result.errors] == ["bad-one"]


def test_cli_embed_and_skip(tmp_path, capsys, tiny_dir, mm, images):
    broken = tmp_path / "broken.png"
    broken.write_bytes(images["photo"].read_bytes()[:500])
    lines = [
        {"id": "g1", "text": "a dog on the beach"},
        {"id": "g2", "image": str(images["photo"])},
        {"id": "b1", "image": str(tmp_path / "missing.png")},
        {"id": "g3", "text": "find the car", "instruction": "Find an image.", "is_query": True},
        {"id": "b2", "text": "x", "image": str(broken)},
    ]
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.npy"
    assert main(["embed", "--model", str(tiny_dir), "--input", str(items), "--output", str(out),
                 "--on-error", "skip", "--no-progress"]) == 0
    vectors = np.load(out)
    assert json.loads(out.with_suffix(".ids.json").read_text()) == ["g1", "g2", "g3"]
    errors = [json.loads(x) for x in out.with_suffix(".errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(3, "b1"), (5, "b2")]
    good = [Item(text=x.get("text"), image=x.get("image"), instruction=x.get("instruction"),
                 is_query=x.get("is_query", False)) for x in lines if x["id"].startswith("g")]
    assert np.abs(vectors - mm.embed(good).vectors).max() <= TOL
    capsys.readouterr()
    code = main(["embed", "--model", str(tiny_dir), "--input", str(items), "--output", str(tmp_path / "o2.npy"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "line 3" in err and "'b1'" in err and err.count("\n") == 1


def test_bfloat16_is_close(tiny_dir, mm, images):
    low = umr.load_model(tiny_dir, dtype="bfloat16")
    items = _mixed_items(images)[:4]
    cos = (low.embed(items).vectors * mm.embed(items).vectors).sum(1)
    assert cos.min() > 0.98


def test_options_it_does_not_take_are_one_line_errors(tmp_path, capsys, tiny_dir):
    with pytest.raises(ValueError, match="does not take min_image_tokens"):
        umr.load_model(tiny_dir, min_image_tokens=4)
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "text": "x"}\n')
    code = main(["embed", "--model", str(tiny_dir), "--input", str(items), "--output", str(tmp_path / "o.npy"),
                 "--min-image-tokens", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "min_image_tokens" in err


def test_real_size_architecture_has_the_published_parameter_count():
    """NV-Embed-v1's sizes + LLaVA-NeXT's CLIP-L/336 tower: 8.18B parameters, as MTEB's MM-Embed
    entry states (n_parameters=8_180_000_000), and a 4096-d output. Built on the meta device."""
    from umr.models.mmembed.modeling_mmembed import (NV_EMBED_V1, LatentAttentionSettings, MistralSettings,
                                                     MMEmbedModel, MMEmbedSettings)

    settings = MMEmbedSettings(vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                              "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
                               text=MistralSettings.from_dict(NV_EMBED_V1["text_config"]),
                               latent=LatentAttentionSettings.from_dict(NV_EMBED_V1["latent_attention_config"]))
    with torch.device("meta"):
        model = MMEmbedModel(settings)
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / 1e9 - 8.18) < 0.01
    names = sorted(model.state_dict())
    assert names == reference_checkpoint_names(24, 32)


def test_truncation_keeps_bos_and_eos(tiny_dir):
    short = umr.load_model(tiny_dir, max_length=12)
    p = short.processor
    ids = p.tokenize("a dog on the beach with a red car and a small child near the old bridge")
    assert len(ids) == 12 and ids[0] == p.bos_id and ids[-1] == p.eos_id


def test_without_eos_token_the_instruction_length_follows(tmp_path):
    folder = write_tiny_mmembed(tmp_path / "no-eos", seed=0, add_eos_token=False)
    model = umr.load_model(folder)
    p = model.processor
    item = Item.query("a dog", instruction="Find it.")
    processed = p.prepare(item)
    assert processed.input_ids[-1] != p.eos_id
    assert processed.instruction_length == 1 + len(p._ids("Instruct: Find it."))
