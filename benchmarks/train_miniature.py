"""A miniature of MM-Embed's recipe: does modality-aware hard-negative mining remove modality bias?

Procedurally generated data, no download: concepts are coloured shapes (at a position), digits
and words rendered as images. Each concept has four candidates in a mixed-modality pool — its
image, its caption (text), the fused image+caption, and a text fact about it — and four tasks
query them:

    t→i   "show me a red circle at the top"              -> the image
    i→t   another rendering of the concept               -> the caption
    t→t   "which team has the red circle at the top?"    -> the fact
    it→t  another rendering + "which team has this?"     -> the fact

The fused candidate shares the words of the caption and the pixels of the image, so a retriever
that matches content without minding the requested modality returns it first: modality bias.

A tiny CLIP-SF (random init, the repo's ``write_tiny_clip``) is trained
(a) with random in-batch negatives; then its own retrievals are mined with ``umr mine``
(b) modality-aware (MM-Embed's type-1 + type-2) and (c) plain ANCE-style, and the same initial
model is trained again with each set of hard negatives. Held-out concepts are evaluated with
``umr.eval``: UniIR's Recall@5 and MM-Embed's modality bias@5 per task. The table is printed and
written to ``benchmarks/results/train_miniature[_quick].json``; nothing is asserted.

    python benchmarks/train_miniature.py            # about 10 minutes on 2 cores
    python benchmarks/train_miniature.py --quick    # a smaller run
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = {"red": (215, 35, 35), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "black": (20, 20, 20), "white": (245, 245, 245), "orange": (240, 140, 30), "purple": (140, 50, 170)}
SHAPES = ["circle", "square", "triangle", "cross", "diamond", "bar"]
POSITIONS = ["top", "bottom", "left", "right"]
DIGITS = list("0123456789")
WORDS = ["dog", "cat", "car", "sky", "sea", "tree", "boat", "bird", "road", "door"]
IMAGE_SIZE = 32
INSTRUCTIONS = {
    "t2i": "Retrieve an image that matches the description.",
    "i2t": "Retrieve a caption that describes the image.",
    "t2t": "Retrieve the fact that answers the question.",
    "it2t": "Retrieve the fact that answers the question about the image.",
}
CATEGORIES = {"t2i": ("text", "image"), "i2t": ("image", "text"), "t2t": ("text", "text"),
              "it2t": ("image,text", "text")}


@dataclass(frozen=True)
class Concept:
    id: str
    kind: str  # shape | digit | word
    colour: str
    detail: str  # the shape, digit or word
    position: str = ""
    team: int = 0

    @property
    def description(self) -> str:
        if self.kind == "shape":
            return f"a {self.colour} {self.detail} at the {self.position}"
        if self.kind == "digit":
            return f"the number {self.detail} in {self.colour}"
        return f"the word {self.detail} in {self.colour}"

    def caption(self) -> str:
        return self.description

    def fact(self) -> str:
        return f"team {self.team} has {self.description}"

    def query(self, task: str, variant: int) -> str | None:
        if task == "t2i":
            return ["show me " + self.description, "a picture of " + self.description][variant % 2]
        if task == "t2t":
            return [f"which team has {self.description}?", f"who has {self.description}?"][variant % 2]
        if task == "it2t":
            return ["which team has this?", "who has this one?"][variant % 2]
        return None  # i2t: the image alone


def concepts(seed: int) -> list[Concept]:
    rng = random.Random(seed)
    out = []
    for colour in COLOURS:
        for shape in SHAPES:
            for position in POSITIONS:
                out.append(Concept(f"s-{colour}-{shape}-{position}", "shape", colour, shape, position))
        for digit in DIGITS:
            out.append(Concept(f"d-{colour}-{digit}", "digit", colour, digit))
        for word in WORDS:
            out.append(Concept(f"w-{colour}-{word}", "word", colour, word))
    return [Concept(c.id, c.kind, c.colour, c.detail, c.position, rng.randint(1, 9)) for c in out]


def render(concept: Concept, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """The concept drawn on grey, with a little random jitter so each rendering differs."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    colour = COLOURS[concept.colour]
    jx, jy = rng.randint(-2, 2), rng.randint(-2, 2)
    if concept.kind == "shape":
        r = size // 6 + rng.randint(-1, 1)
        cx, cy = {"top": (size // 2, size // 4), "bottom": (size // 2, 3 * size // 4),
                  "left": (size // 4, size // 2), "right": (3 * size // 4, size // 2)}[concept.position]
        cx, cy = cx + jx, cy + jy
        box = [cx - r, cy - r, cx + r, cy + r]
        if concept.detail == "circle":
            draw.ellipse(box, fill=colour)
        elif concept.detail == "square":
            draw.rectangle(box, fill=colour)
        elif concept.detail == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        elif concept.detail == "cross":
            draw.rectangle([cx - r, cy - r // 3, cx + r, cy + r // 3], fill=colour)
            draw.rectangle([cx - r // 3, cy - r, cx + r // 3, cy + r], fill=colour)
        elif concept.detail == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
        else:  # bar
            draw.rectangle([cx - r, cy - r // 3, cx + r, cy + r // 3], fill=colour)
    else:
        font = ImageFont.load_default(size=size * 2 // 3 if concept.kind == "digit" else size // 3)
        draw.text((size // 2 + jx, size // 2 + jy), concept.detail, fill=colour, font=font, anchor="mm")
    return image


# -- data files -----------------------------------------------------------------------------------


def write_split(folder: Path, split: list[Concept], *, queries_per_task: int, seed: int) -> dict:
    """The pool JSONL, one training JSONL per task, and the queries (for evaluation) of one split."""
    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    pool = []
    for c in split:
        path = images / f"{c.id}.png"
        render(c, rng).save(path)
        pool += [{"id": f"img:{c.id}", "text": None, "image": f"images/{c.id}.png"},
                 {"id": f"cap:{c.id}", "text": c.caption(), "image": None},
                 {"id": f"fused:{c.id}", "text": c.caption(), "image": f"images/{c.id}.png"},
                 {"id": f"fact:{c.id}", "text": c.fact(), "image": None}]
    (folder / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    by_id = {r["id"]: r for r in pool}
    targets = {"t2i": "img", "i2t": "cap", "t2t": "fact", "it2t": "fact"}
    queries: dict[str, list[dict]] = {task: [] for task in targets}
    for c in split:
        for variant in range(queries_per_task):
            for task, prefix in targets.items():
                image = None
                if task in ("i2t", "it2t"):
                    image = f"images/q-{task}-{c.id}-{variant}.png"
                    render(c, rng).save(folder / image)
                text = c.query(task, variant)
                positive = by_id[f"{prefix}:{c.id}"]
                queries[task].append({
                    "query": {"id": f"{task}:{c.id}:{variant}", "text": text, "image": image,
                              "instruction": INSTRUCTIONS[task]},
                    "positive": positive, "source": task})
    for task, examples in queries.items():
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    return queries


def eval_tasks(folder: Path, queries: dict[str, list[dict]]):
    """The held-out split as ``umr.eval`` tasks, all searching the one mixed-modality pool."""
    from umr.eval import RetrievalTask, category_of
    from umr.core.items import Item, Modality

    def resolve(value):
        return None if value is None else str(folder / value)

    candidates = [Item.candidate(text=r["text"], image=resolve(r["image"]), id=r["id"])
                  for r in map(json.loads, (folder / "pool.jsonl").read_text().splitlines())]
    tasks = []
    for task, examples in queries.items():
        items = [Item.query(text=e["query"]["text"], image=resolve(e["query"]["image"]),
                            instruction=e["query"]["instruction"], id=e["query"]["id"]) for e in examples]
        qrels = {e["query"]["id"]: {e["positive"]["id"]: 1} for e in examples}
        qmod, target = CATEGORIES[task]
        tasks.append(RetrievalTask(name=task, queries=items, candidates=candidates, qrels=qrels,
                                   category=category_of(qmod, target), target_modality=Modality.parse(target),
                                   dataset="miniature", hit_k=5))
    return tasks


def evaluate(model, tasks) -> dict[str, dict[str, float]]:
    """UniIR's Recall@5 and MM-Embed's modality bias@5 per task, plus ``concept@5``: the share of
    queries with *any* candidate of the right concept (whatever its modality) in the top 5 — what
    the model knows about the content, apart from whether it returns the requested modality."""
    from umr.eval import EvalConfig, Evaluator, trec_order

    evaluator = Evaluator(model, config=EvalConfig(depth=10, k_values=(5,)))
    out = {}
    for task in tasks:
        outcome = evaluator.evaluate_task(task)
        result = outcome.result
        concept_hits = [any(did.split(":", 1)[1] == qid.split(":")[1] for did in trec_order(scores)[:5])
                        for qid, scores in outcome.run.items()]
        out[task.name] = {"recall@5": result.metrics["hit@5"], "bias@5": result.modality_bias["bias"],
                          "concept@5": sum(concept_hits) / len(task.queries),
                          "shares@5": result.modality_bias["shares"]}
    return out


# -- the runs -------------------------------------------------------------------------------------


def train_run(init: Path, data: list[Path], output: Path, *, steps: int, hard_negatives: int, args) -> Path:
    from umr.train import TrainConfig, train

    config = TrainConfig(model=str(init), data=[str(p) for p in data], output=str(output), max_steps=steps,
                         lr=args.lr, batch_size=args.batch_size, temperature=args.temperature, full=True,
                         hard_negatives=hard_negatives, seed=args.seed, progress=False)
    record = output / "training.json"
    if record.is_file() and json.loads(record.read_text())["config"] == config.to_dict():
        return output  # trained with these settings by an earlier run in the same --work folder
    return Path(train(config))


def mine_run(model_dir: Path, train_dir: Path, out_dir: Path, *, plain: bool, args) -> list[Path]:
    import umr
    from umr.train.mine import MineSettings, mine_file, provenance_path

    model = umr.load_model(str(model_dir))
    settings = MineSettings(top_k=args.top_k, skip=args.skip, plain=plain)
    outputs = []
    for task in INSTRUCTIONS:
        output = out_dir / f"{task}.{'plain' if plain else 'aware'}.jsonl"
        if output.is_file() and json.loads(provenance_path(output).read_text())["settings"] == asdict(settings):
            outputs.append(output)  # mined by an earlier run in the same --work folder (same model folder)
            continue
        mine_file(model, data=train_dir / f"{task}.jsonl", pool=train_dir / "pool.jsonl", output=output,
                  settings=settings, index_dir=out_dir / "pool-index", show_progress=False)
        outputs.append(output)
    return outputs


def negative_kinds(files: list[Path]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in files:
        for line in path.read_text().splitlines():
            for negative in json.loads(line)["negatives"]:
                counts[negative["kind"]] = counts.get(negative["kind"], 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer concepts, queries and steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--hard-negatives", type=int, default=1, help="mined negatives per example per epoch")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--skip", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plain", action="store_true", help="skip run (c), plain ANCE negatives")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the data and models here; a rerun reuses what was trained or mined with the "
                             "same settings")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    import umr
    from umr.testing import write_tiny_clip

    torch.set_num_threads(2)
    steps = args.steps or (60 if args.quick else 120)
    queries_per_task = 1 if args.quick else 2
    started, cpu_started = time.monotonic(), time.process_time()
    work = args.work or Path(tempfile.mkdtemp(prefix="umr-miniature-"))
    rng = random.Random(args.seed)
    all_concepts = concepts(args.seed)
    rng.shuffle(all_concepts)
    if args.quick:
        all_concepts = all_concepts[:160]
    held_out = len(all_concepts) // 4
    test, train_split = all_concepts[:held_out], all_concepts[held_out:]
    train_dir, test_dir = work / "train", work / "test"
    write_split(train_dir, train_split, queries_per_task=queries_per_task, seed=args.seed)
    tasks = eval_tasks(test_dir, write_split(test_dir, test, queries_per_task=queries_per_task, seed=args.seed + 1))
    print(f"data: {len(train_split)} training / {len(test)} held-out concepts, {4 * len(test)} candidates in the "
          f"held-out pool, {sum(len(t.queries) for t in tasks)} held-out queries ({time.monotonic() - started:.0f}s)",
          file=sys.stderr)

    init = write_tiny_clip(work / "init", seed=args.seed,
                           text=dict(max_position_embeddings=32, hidden_size=64, intermediate_size=128),
                           vision=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=64, intermediate_size=128),
                           projection_dim=64)
    train_files = [train_dir / f"{task}.jsonl" for task in INSTRUCTIONS]
    results, negatives, timings = {}, {}, {}

    def record(name: str, model_dir: Path) -> None:
        t0 = time.monotonic()
        results[name] = evaluate(umr.load_model(str(model_dir)), tasks)
        timings[f"eval {name}"] = time.monotonic() - t0

    record("init", init)
    t0 = time.monotonic()
    random_model = train_run(init, train_files, work / "random", steps=steps, hard_negatives=0, args=args)
    timings["train random"] = time.monotonic() - t0
    record("random", random_model)
    runs = [("aware", False)] + ([] if args.quick or args.no_plain else [("plain", True)])
    for name, plain in runs:
        t0 = time.monotonic()
        mined = mine_run(random_model, train_dir, work / f"mined-{name}", plain=plain, args=args)
        negatives[name] = negative_kinds(mined)
        timings[f"mine {name}"] = time.monotonic() - t0
        t0 = time.monotonic()
        model_dir = train_run(init, mined, work / name, steps=steps, hard_negatives=args.hard_negatives, args=args)
        timings[f"train {name}"] = time.monotonic() - t0
        record(name, model_dir)

    names = list(results)
    labels = {"init": "untrained", "random": "(a) random", "aware": "(b) modality-aware",
              "plain": "(c) plain ANCE"}
    metrics = [("recall@5", "R@5"), ("bias@5", "bias@5"), ("concept@5", "concept@5")]
    print("| task | " + " | ".join(f"{short} {labels[n]}" for _, short in metrics for n in names) + " |")
    print("|" + "---|" * (1 + len(metrics) * len(names)))
    for task in tasks:
        cells = [f"{100 * results[n][task.name][key]:.1f}" for key, _ in metrics for n in names]
        print(f"| {task.category} | " + " | ".join(cells) + " |")
    cells = [f"{100 * sum(results[n][t.name][key] for t in tasks) / len(tasks):.1f}" for key, _ in metrics for n in names]
    print("| mean | " + " | ".join(cells) + " |")
    total, cpu = time.monotonic() - started, time.process_time() - cpu_started
    print(f"mined negatives: {negatives}; {steps} steps per run; {total:.0f}s wall, {cpu:.0f}s CPU in all")

    output = args.output or Path(__file__).parent / "results" / f"train_miniature{'_quick' if args.quick else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "settings": {"quick": args.quick, "steps": steps, "batch_size": args.batch_size, "lr": args.lr,
                     "temperature": args.temperature, "hard_negatives": args.hard_negatives, "top_k": args.top_k,
                     "skip": args.skip, "seed": args.seed, "train_concepts": len(train_split),
                     "held_out_concepts": len(test), "pool": 4 * len(test),
                     "queries": {t.name: len(t.queries) for t in tasks}},
        "results": results, "negatives": negatives, "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(total, 1), "cpu_seconds": round(cpu, 1)}, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
