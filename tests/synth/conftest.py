"""Fixtures for synthesis: a tiny generator whose replies are scripted through its logits, a tiny
CLIP (retriever and image scorer) and a small corpus of captioned images and notes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from umr.synth import ClipScorer, HFGenerator, OwnImages, SynthConfig, load_generator, synthesize
from umr.testing import ScriptedLogits, write_tiny_generator

#: caption words per image; every caption names a distinct subject, two ask the same thing
CAPTIONS = {
    "heron": "The grey heron wades in shallow lakes hunting fish.",
    "maple": "The sugar maple grows in eastern forests and gives syrup.",
    "kettle": "A copper kettle boils water on the kitchen stove.",
    "lantern": "A paper lantern glows above the night market street.",
    "anchor": "An iron anchor rests on the harbour quay wall.",
    "violin": "A fine violin made of spruce sings in the concert hall.",
    "malformed": "A MALFORMED note that the generator never answers properly.",
    "oncebad": "The ONCEBAD tulip answers properly on its second try.",
}
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
           (120, 120, 120), (250, 150, 50)]


def scripted_reply(prompt: str) -> str:
    """The reply the tests script: a query naming the passage's subject, then its generic rewrite."""
    turns = [t.split("<|im_end|>", 1)[0] for t in prompt.split("<|im_start|>user\n")[1:]]
    asked = [t for t in turns if not t.startswith("That reply was")]
    turn, retried = asked[-1], len(asked) < len(turns)
    if turn.startswith("Passage: "):
        passage = turn[len("Passage: "):]
        if "MALFORMED" in passage or ("ONCEBAD" in passage and not retried):
            return "query: not json {"
        subject = re.findall(r"\w+", passage)[2].lower() if "ONCEBAD" not in passage else "tulip"
        return '{"query": "Where does the %s belong?", "answer": "%s"}' % (subject, passage[:20])
    query = turn[len("Query: "):]
    subject = query.split()[3].rstrip("?")
    return '{"entity": "%s", "rewritten": "Where does this thing belong?"}' % subject


class CountingGenerator:
    """A generator that counts the replies it writes (the pipeline's Generator contract)."""

    def __init__(self, inner: HFGenerator):
        self.inner = inner
        self.name = inner.name
        self.decoding = inner.decoding
        self.calls = 0
        self.replies = 0

    def generate(self, chats, *, seed):
        self.calls += 1
        self.replies += len(chats)
        return self.inner.generate(chats, seed=seed)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny models' matrices are too small for threads: on shared cores they only spin (13x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory) -> Path:
    return write_tiny_generator(tmp_path_factory.mktemp("generator"))


def scripted_generator(folder: Path, reply=scripted_reply) -> HFGenerator:
    generator = load_generator(folder)
    generator.logits_processors = lambda: [ScriptedLogits(generator.tokenizer, reply)]
    return generator


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    from umr import load_model
    from umr.testing import write_tiny_clip

    return load_model(write_tiny_clip(tmp_path_factory.mktemp("clip")))


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for (name, caption), colour in zip(CAPTIONS.items(), COLOURS):
        image = Image.new("RGB", (48, 40), colour)
        for x in range(0, 48, 6):  # some structure, so images differ beyond their colour
            image.putpixel((x, x % 40), (255 - colour[0], 255 - colour[1], 255 - colour[2]))
        image.save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption, encoding="utf-8")
    (folder / "notes.txt").write_text("Plain words about the weather with no picture at all.", encoding="utf-8")
    return folder


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


# -- running the pipeline and reading what it wrote ---------------------------------------------

def run(corpus: Path, out: Path, generator, clip, **options):
    config = SynthConfig(source=str(corpus), output=str(out), progress=False, batch_size=3, **options)
    return synthesize(config, generator=generator, retriever=clip, scorer=ClipScorer(clip),
                      image_sources=[OwnImages()])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_training_schema(path: Path) -> None:
    """The generic training JSONL of umr.train.data: query and positive objects with string text/image
    (at least one), images that exist (paths relative to the file or absolute), a negatives list."""
    for record in read(path):
        for role in ("query", "positive"):
            item = record[role]
            assert isinstance(item, dict)
            assert any(isinstance(item.get(f), str) and item[f].strip() for f in ("text", "image"))
            for f in ("text", "image", "instruction"):
                assert item.get(f) is None or isinstance(item[f], str)
            if item.get("image"):
                assert (path.parent / item["image"]).is_file()
        assert isinstance(record["negatives"], list) and isinstance(record["source"], str)
        assert record["kind"] in ("t2it", "it2t", "it2it")
        assert record["provenance"]["source_id"] == record["positive"]["id"]
