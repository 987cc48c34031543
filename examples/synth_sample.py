"""Worked example: the sample corpus through ``umr synth``'s pipeline, then ``umr train`` on the result.

Offline and CPU-only, so the generator is the tiny random Qwen2 fixture with its replies scripted
through its logits (a rule that asks about a passage's most frequent long word), the image scorer
is a tiny random CLIP and the consistency filter uses ``minilm`` (a real text model). It shows the
mechanics — stages, filters, cache, output format, training — not the quality of real synthesis;
for that, pass a real generator folder (e.g. Qwen2.5-VL-7B-Instruct) and a real CLIP to ``umr synth``.

    PYTHONPATH=src python examples/synth_sample.py [WORK_FOLDER]
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from umr import load_model
from umr.synth import ClipScorer, ImageCollection, OwnImages, SynthConfig, load_generator, synthesize
from umr.testing import ScriptedLogits, write_tiny_clip, write_tiny_generator

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "samples" / "corpus"


def subject(text: str) -> str:
    words = [w for w in re.findall(r"[A-Za-z]{5,}", text) if w.lower() not in {"which", "there", "their", "about"}]
    return Counter(w.lower() for w in words).most_common(1)[0][0] if words else "this"


def reply(prompt: str) -> str:
    """What a real generator would be asked for, written by rule: a question naming the passage's subject."""
    turns = [t.split("<|im_end|>", 1)[0] for t in prompt.split("<|im_start|>user\n")[1:]]
    asked = [t for t in turns if not t.startswith("That reply was")][-1]
    if asked.startswith("Passage: "):
        word = subject(asked[len("Passage: "):])
        return '{"query": "What does the text say about %s?", "answer": "%s"}' % (word, word)
    word = asked.rsplit(" ", 1)[-1].rstrip("?")
    return '{"entity": "%s", "rewritten": "What does the text say about this?"}' % word


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    generator = load_generator(write_tiny_generator(work / "tiny-generator"))
    generator.logits_processors = lambda: [ScriptedLogits(generator.tokenizer, reply)]
    clip = load_model(write_tiny_clip(work / "tiny-clip"))
    output = work / "synth.jsonl"
    config = SynthConfig(source=str(CORPUS), output=str(output), top_k=5,
                         image_threshold=-1.0)  # a random CLIP's scores mean nothing: keep every image
    sources = [OwnImages(work / "page-images"), ImageCollection(CORPUS / "photos", clip, work / "photo-index", top=2)]
    summary = synthesize(config, generator=generator, retriever=load_model("minilm"), scorer=ClipScorer(clip),
                         image_sources=sources)
    print("\n".join(summary.lines()))
    print(f"wrote {output}")
    subprocess.run([sys.executable, "-m", "umr.cli", "train", "--model", str(work / "tiny-clip"), "--data",
                    str(output), "--output", str(work / "trained"), "--max-steps", "2", "--batch-size", "4",
                    "--full"], check=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("synth-example"))
