"""``umr eval``: score a model on M-BEIR or BEIR-style benchmarks; ``umr eval compare A B``.

    umr eval --model minilm --benchmark beir --data tests/fixtures/eval/beir --output out/minilm
    umr eval --model gme-2b --benchmark mbeir --data M-BEIR --tasks cirr_task7 --pool both --output out/gme
    umr eval --model qwen3-vl-embedding-2b --benchmark mbeir --data M-BEIR --dims 64,256,1024,2048 --output out/q3
    umr eval --model gme-2b --benchmark mbeir --data M-BEIR --ray --workers 4 --gpus-per-worker 1 --output out/gme
    umr eval --model colqwen2.5-v0.2 --benchmark vidore --data vidore/ --output out/colqwen
    umr eval compare out/minilm out/other

Embeddings are cached under OUTPUT/cache (committed every 256 items or 30 s) and finished tasks
under OUTPUT/tasks, so running the same command again after an interruption resumes where it
stopped. OUTPUT belongs to one model with its options; another model needs its own folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.results import TaskResult
from ..data.beir import load_beir
from ..data.mbeir import MBEIR
from ..data.vidore import load_vidore
from ..eval import EvalConfig, Evaluator
from ..eval.cache import model_key as key_of
from ..eval.report import compare, load_scores, metric_label
from ..eval.notes import dropped_note, failure_note, percent
from ..models.identity import files_fingerprint
from ..models.catalog import MODELS
from ..models.multivector import MultiVectorEmbedder
from ..models.registry import ModelNotAvailable, detect_family, local_folder, model_folder
from .common import UsageError, add_model_options, load_model_from_args, model_options
from .ray_options import add_ray_options, ray_embedder
from .rerank import add_rerank_flags, check_rerank_flags, load_rerank_flag


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate a model on M-BEIR / BEIR-style benchmarks (or: umr eval compare A B)",
        description="Evaluate a model on M-BEIR or BEIR-style benchmarks and write TREC runs, "
                    "scores.json, results.md and report.html. `umr eval compare A B` prints per-task "
                    "deltas between two output folders (or scores.json files).")
    add_model_options(parser)
    for action in parser._actions:  # --model is not needed by `compare`
        if action.dest == "model":
            action.required = False
    parser.add_argument("compare", nargs="*", metavar="compare A B",
                        help="compare two earlier outputs instead of evaluating")
    parser.add_argument("--benchmark", choices=["mbeir", "beir", "vidore"],
                        help="layout of --data (vidore: ViDoRe's parquet subsets, V1 tables or BEIR folders "
                             "of page images, headline nDCG@5 / V3 nDCG@10)")
    parser.add_argument("--data", type=Path, help="M-BEIR root, or a BEIR / ViDoRe task folder / folder of task folders")
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="only these tasks (M-BEIR: e.g. cirr_task7; BEIR: the task.json name, else the folder name)")
    parser.add_argument("--pool", choices=["local", "global", "both"], default="local",
                        help="M-BEIR candidate pool (default: local)")
    parser.add_argument("--split", default="test", help="split (default: test)")
    parser.add_argument("--instructions", choices=["random", "first", "none"], default="random",
                        help="M-BEIR query instructions: UniIR's seeded random pick (default), the first "
                             "prompt, or none")
    parser.add_argument("--seed", type=int, default=0, help="seed of the instruction pick (default 0)")
    parser.add_argument("--depth", type=int, default=100, help="candidates kept per query (default 100)")
    parser.add_argument("--output", type=Path, help="output folder (cache, runs, reports)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="embed again every item that failed before (items whose file changed since "
                             "are always retried)")
    parser.add_argument("--dims", type=dimension_list, default=None, metavar="N,N,...",
                        help="Matryoshka models: score each of these dimensions (e.g. 64,256,1024,2048) from "
                             "one full-dimension embedding; results under OUTPUT/dim-N, the sweep in "
                             "OUTPUT/dims.md")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_rerank_flags(parser)
    add_ray_options(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.compare:
        return _compare(args.compare)
    missing = [flag for flag, value in (("--model", args.model), ("--benchmark", args.benchmark),
                                        ("--data", args.data), ("--output", args.output)) if not value]
    if missing:
        raise UsageError(f"{', '.join(missing)} required (or: umr eval compare A B)")
    if not args.data.exists():
        raise UsageError(f"no such data folder: {args.data}")
    if args.depth < 1:
        raise UsageError("--depth must be at least 1")
    check_rerank_flags(args)
    if args.dims is not None and args.dim is not None:
        raise UsageError("--dims sweeps dimensions of the full vectors: leave out --dim")

    tasks = _load_tasks(args)
    if _is_late_interaction(str(args.model)):  # its kind decides the cache: loaded now
        if args.ray:
            raise UsageError("--ray does not take late-interaction (multi-vector) models yet; evaluate here")
        model = load_model_from_args(args, multi_vector=True)
    else:  # loaded on first use: a finished evaluation re-reports without loading
        model = _LazyModel(str(args.model), lambda: load_model_from_args(args))
    reranker = _LazyModel(str(args.rerank), lambda: load_rerank_flag(args)) if args.rerank else None
    config = EvalConfig(depth=args.depth, batch_size=args.batch_size, show_progress=not args.no_progress
                        and sys.stderr.isatty())
    try:
        evaluator = Evaluator(model, output=args.output, config=config, model_key=model_key(args, model),
                              retry_errors=args.retry_errors,
                              log=lambda message: print(f"umr eval: {message}", file=sys.stderr),
                              reranker=reranker, rerank_k=args.rerank_k, reranker_key=rerank_key(args),
                              dims=args.dims)
        evaluator.check(tasks)  # an unknown headline metric or an id TREC cannot hold: before any work
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.ray:  # the workers each load the model; this process loads it only if a sweep must check it
        evaluator.embedder = _RayOnFirstUse(lambda: ray_embedder(args, str(args.model)))
    try:
        scores = evaluator.evaluate(tasks, benchmark=args.benchmark)
    finally:
        if args.ray:
            evaluator.embedder.close()
    if args.dims is not None:
        return _print_sweep(args, scores)
    for pool, avg in scores["averages"].items():
        failed = f", {avg['n_failed_tasks']} with failures (marked ⚠ in results.md)" if avg["n_failed_tasks"] else ""
        headlines = sorted({r["main_metric"] for r in scores["tasks"] if r["pool"] == pool})
        named = f" ({', '.join(metric_label(h) for h in headlines)})" if headlines else ""
        print(f"umr eval: {scores['model']} {args.benchmark} [{pool}] {avg['n_tasks']} task(s){failed}: "
              f"mean headline{named} {percent(avg['main_score'])}, NDCG@10 {percent(avg['ndcg@10'])}, "
              f"modality bias {percent(avg['modality_bias'], 1, '%')}"
              + (f"; reranked headline {percent(avg['rerank_main_score'])}" if "rerank_main_score" in avg else ""))
    for result in map(TaskResult.from_json, scores["tasks"]):
        for note, mark in ((failure_note(result), "⚠ failed:"), (dropped_note(result), "note:")):
            if note:
                print(f"umr eval: {mark} {result.pool}/{result.task}: {note}")
    print(f"umr eval: wrote {args.output / 'scores.json'}, {args.output / 'results.md'}, "
          f"{args.output / 'report.html'} and runs under {args.output / 'runs'}")
    return 0


def dimension_list(text: str) -> list[int]:
    """``64,256,1024`` -> ``[64, 256, 1024]``; anything but whole numbers of at least 1 is refused."""
    dims = []
    for part in text.split(","):
        try:
            dims.append(int(part.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {part.strip()!r}") from None
        if dims[-1] < 1:
            raise argparse.ArgumentTypeError(f"dimensions must be at least 1, got {dims[-1]}")
    return dims


def _print_sweep(args, sweep) -> int:
    for pool, avg in sweep["averages"].items():
        shown = ", ".join(f"dim {d} {percent(avg['main_score'][str(d)])}" for d in sweep["dims"])
        print(f"umr eval: {sweep['model']} {args.benchmark} [{pool}] mean headline by dimension: {shown}")
    failed = [f"{r['pool']}/{r['task']}" for r in sweep["tasks"] if r["failed"]]
    if failed:
        print(f"umr eval: ⚠ failed items in {', '.join(failed)} (see the dim-N/results.md files)")
    print(f"umr eval: wrote {args.output / 'dims.md'}, {args.output / 'dims.json'} and one folder per "
          f"dimension ({', '.join(str(args.output / f'dim-{d}') for d in sweep['dims'])})")
    return 0


def model_key(args, model=None) -> str:
    """The model named on the command line with the options that change its vectors, e.g.
    ``gme-2b[dtype=bfloat16,files=…,max_image_tokens=256]`` (:func:`umr.eval.cache.model_key`
    decides).

    It keys the embedding cache and the finished tasks, and owns the output folder: rerunning
    into the same ``--output`` with another ``--dtype`` or image token bound is refused rather
    than overwriting. (``--device`` and ``--batch-size`` are left out: they do not choose what is
    computed.)
    """
    # the files' digest: other weights saved under the same name never share cached vectors
    try:
        files = files_fingerprint(model_folder(args.model))[:12]
    except ModelNotAvailable:  # loading will say why; nothing is cached for it meanwhile
        files = None
    lazy = _LazyModel(str(args.model), lambda: load_model_from_args(args))
    return key_of(model if model is not None else lazy,
                  {"dtype": getattr(args, "dtype", None), **model_options(args), "files": files})


def rerank_key(args) -> str | None:
    """The ``--rerank`` model with the options that change its scores (dtype, prompts file content)."""
    if not args.rerank:
        return None
    options = {"dtype": args.dtype}
    if args.rerank_prompts is not None and args.rerank_prompts.is_file():
        import hashlib

        options["prompts"] = hashlib.sha1(args.rerank_prompts.read_bytes()).hexdigest()[:12]
    shown = ",".join(f"{k}={v}" for k, v in sorted(options.items()) if v is not None)
    return f"{args.rerank}[{shown}]" if shown else str(args.rerank)


def _is_late_interaction(name: str) -> bool:
    """Whether ``--model`` is of a late-interaction (multi-vector) family, read from its files
    without loading it (a model that cannot be found is left for loading to report)."""
    try:
        resolved = MODELS.resolve(name, {}, locate=local_folder, detect=lambda folder, source: detect_family(folder))
    except (ModelNotAvailable, ValueError):
        return False
    return issubclass(MODELS.family_class(resolved.family), MultiVectorEmbedder)


class _RayOnFirstUse:
    """The ``--ray`` workers (a :class:`~umr.index.embedding.ChunkEmbedder`), started when the
    first chunk is asked for: a finished evaluation re-reports without starting a cluster."""

    def __init__(self, start):
        self._start = start
        self._embedder = None

    def map(self, chunks, *, batch_size=None):
        if self._embedder is None:
            self._embedder = self._start()
        yield from self._embedder.map(chunks, batch_size=batch_size)

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()


class _LazyModel:
    """A model (embedder or reranker) named on the command line, loaded by ``load`` the first time
    something needs it."""

    def __init__(self, name: str, load):
        self._load = load
        self._model = None
        self.name = name

    def __getattr__(self, attr):
        if attr.startswith("_"):
            raise AttributeError(attr)
        if self._model is None:
            self._model = self._load()
        return getattr(self._model, attr)


def _load_tasks(args):
    try:
        if args.benchmark == "mbeir":
            bench = MBEIR(args.data, split=args.split)
            pools = ["local", "global"] if args.pool == "both" else [args.pool]
            return [bench.task(name, pool=pool, instruction_policy=args.instructions, seed=args.seed)
                    for pool in pools for name in (args.tasks or bench.task_names)]
        if args.benchmark == "vidore":
            return load_vidore(args.data, tasks=args.tasks, split=args.split)
        return load_beir(args.data, tasks=args.tasks, split=args.split)
    except KeyError as exc:
        raise UsageError(str(exc.args[0]) if exc.args else str(exc)) from None
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None


def _compare(values: list[str]) -> int:
    if len(values) != 3 or values[0] != "compare":
        raise UsageError("usage: umr eval compare A B (output folders or scores.json files)")
    try:
        a, b = load_scores(values[1]), load_scores(values[2])
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(compare(a, b, names=(values[1], values[2])))
    return 0
