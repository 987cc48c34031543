"""Run an embedder over retrieval tasks: embed (cached, resumable), search exactly, score, write.

>>> from umr.eval import evaluate, load_beir_task
>>> results = evaluate(model, [load_beir_task("data/scifact")], output="out/")   # doctest: +SKIP

The output folder holds ``cache/`` (embeddings, reused on the next run), ``runs/<pool>/<task>.trec``
(TREC run) and ``runs/<pool>/<task>.uniir.trec`` (UniIR's 7-column variant with the task id),
``tasks/<pool>/<task>.json`` (one finished task; a rerun skips it), ``scores.json`` (every score),
``results.md`` (the papers' tables) and ``report.html`` (self-contained, with charts). It belongs
to one model (``model.json``): reusing it for another model, or the same one with other options,
is refused rather than overwriting the first model's results. A Matryoshka sweep (``dims``) writes
each dimension's runs, tasks and reports under ``dim-N/`` and the sweep in ``dims.json`` / ``dims.md``.

Means follow each benchmark's reference (the task's ``average``): BEIR-style tasks average over
the queries that were run and have judgements, as BEIR, MTEB and trec_eval do (qrels for a query
the task does not hold, and queries that failed, are dropped and counted); M-BEIR averages over
every query of the task, as UniIR does (a failed query scores 0).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.atomic import write_text_atomic
from ..data.tasks import UMRB_GROUPS, RetrievalTask
from ..index.embedding import ChunkEmbedder, LocalEmbedder
from ..index.exact import search_exact
from ..models.matryoshka import renormalised_prefix, sweep_dims
from ..rerank.base import Pair, reranked_order
from ..rerank.cache import RerankStore
from ..rerank.registry import reranker_key as default_reranker_key
from .cache import EmbeddingStore, fingerprint, model_key as key_of
from .metrics import evaluate_run, mean_metrics, modality_bias, trec_order
from .notes import dropped_note, failure_note
from .report import sweep_report, write_reports as write_report_files
from .trec import check_trec_id, drop_identical_ids, run_from_topk, write_run

#: how many failure reasons a task's result keeps (and the summaries show)
FIRST_REASONS = 3


@dataclass
class EvalConfig:
    """What is computed. ``depth`` is how many candidates each query's run keeps."""

    depth: int = 100
    k_values: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
    ndcg_k: tuple[int, ...] = (10,)
    mrr_k: tuple[int, ...] = (10,)
    map_k: tuple[int, ...] = ()
    relevance_level: int = 1
    #: k of the modality-bias diagnostic; None = the task's headline k (5, or 10 for fashion)
    bias_k: int | None = None
    batch_size: int | None = None
    #: the embedding cache commits every this many items or seconds (as ``umr index`` does), so
    #: an interruption loses at most that much work
    commit_every: int = 256
    commit_seconds: float = 30.0
    show_progress: bool = False

    def signature(self) -> str:
        fields = {k: v for k, v in asdict(self).items()
                  if k not in ("batch_size", "commit_every", "commit_seconds", "show_progress")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()[:12]


@dataclass
class TaskOutcome:
    """One task's scores plus the run behind them."""

    result: dict[str, Any]
    run: dict[str, dict[str, float]] = field(default_factory=dict)


def _pool_digest(candidates) -> str:
    """The pool's content: ids, texts and images (a path, or an in-memory image's bytes/pixels)."""
    h = hashlib.sha1()
    for cand in candidates:
        image = cand.image
        image_key = image if isinstance(image, str) else type(image) if image is None else fingerprint(cand)
        failed = "" if cand.error is None else f"\x00{cand.error}"  # why a bad record failed is content too
        h.update(f"{cand.id}\x00{cand.text}\x00{image_key}{failed}\x01".encode("utf-8", "replace"))
    return h.hexdigest()


#: metric -> whether it needs ``@k``; spelled as :func:`umr.eval.metrics.query_metrics` names them
_METRICS = {"ndcg": True, "recall": True, "p": True, "hit": True, "mrr": False, "map": False}
_ALIASES = {"precision": "p"}
_HEADLINE = re.compile(r"^([a-z]+)(?:@(\d+))?$")


def headline_metric(name: str) -> tuple[str, str, int | None]:
    """Parse a headline metric name (``ndcg@10``, ``nDCG@5``, ``MRR@100``, ``map``, ``hit@5``, ...).

    Returns ``(key, metric, k)``, ``key`` being the name the scores use (``ndcg@10``); raises
    ``ValueError`` for a metric the evaluator does not compute.
    """
    match = _HEADLINE.match(str(name).strip().lower())
    metric = _ALIASES.get(match.group(1), match.group(1)) if match else None
    k = int(match.group(2)) if match and match.group(2) is not None else None
    if metric not in _METRICS or (k is None and _METRICS[metric]) or (k is not None and k < 1):
        raise ValueError(f"unknown headline metric {name!r}: use ndcg@k, recall@k, p@k, hit@k, mrr, "
                         f"mrr@k, map or map@k (k >= 1, any case)")
    return (metric if k is None else f"{metric}@{k}"), metric, k


def _task_signature(task: RetrievalTask, model_key: str, config: EvalConfig, pool_digest: str) -> str:
    h = hashlib.sha1()
    h.update(model_key.encode())
    h.update(config.signature().encode())
    h.update(task.pool.encode())
    h.update(headline_metric(task.headline)[0].encode())
    h.update(f"{task.average}:{task.ignore_identical_ids}".encode())
    for item in task.queries:
        h.update(item.id.encode() + fingerprint(item).encode())
    h.update(pool_digest.encode())
    for qid in sorted(task.qrels):
        h.update(json.dumps([qid, sorted(task.qrels[qid].items())]).encode())
    return h.hexdigest()[:16]


class Evaluator:
    """Evaluates one model on tasks; with ``output`` it caches, resumes and writes files.

    ``model_key`` names the model *with the options that change its vectors* (dtype, image token
    bounds, ...; see :func:`umr.eval.cache.model_key`, the default); it keys the embedding cache
    and the finished-task signatures, so the same model loaded differently never reuses the
    other's vectors or results. An ``output`` folder written for another key is refused
    (``ValueError``). ``retry_errors`` embeds again every item that failed before (an item
    whose image file changed since it failed is always tried again).

    With a ``reranker`` (:class:`~umr.rerank.Reranker`) each query's top ``rerank_k`` candidates
    are reranked too, and every task reports both rankings' scores (``result["rerank"]``); rerank
    scores are cached under ``cache/rerank`` (keyed by ``reranker_key``) and resumable.

    With ``dims`` (a Matryoshka model's dimension sweep) every item is embedded once at the
    model's full dimension (cached as any run's vectors are) and each dimension is scored from
    the vectors' renormalised prefixes; each writes its runs, tasks and reports under
    ``OUTPUT/dim-N/`` (apart from each other and from a run without ``dims``), and
    :meth:`evaluate` returns the sweep (``dims.json``, ``dims.md``: one column per dimension).
    ``embedder`` (a :class:`~umr.index.embedding.ChunkEmbedder`, e.g. a
    :class:`~umr.index.ray_embed.RayEmbedder`) runs the model elsewhere; default: this process.
    """

    #: how many candidate lists' digests are remembered (each kept alive beside its digest)
    _POOLS_KEPT = 64

    def __init__(self, model, *, output: str | Path | None = None, config: EvalConfig | None = None,
                 run_name: str | None = None, log: Callable[[str], None] | None = None,
                 model_key: str | None = None, retry_errors: bool = False, reranker=None,
                 rerank_k: int = 10, reranker_key: str | None = None, dims: Sequence[int] | None = None,
                 embedder: ChunkEmbedder | None = None):
        self.model = model
        #: where the model runs (this process, or Ray workers): chunks of items in, vectors out
        self.embedder = embedder if embedder is not None else LocalEmbedder(model)
        #: a Matryoshka sweep's dimensions (each scored from the full vectors' prefixes), or None
        self.dims = sweep_dims(model, dims) if dims is not None else None
        self.config = config or EvalConfig()
        self.output = Path(output) if output is not None else None
        self.model_name = str(getattr(model, "name", type(model).__name__))
        self.model_key = model_key or key_of(model)
        self.retry_errors = retry_errors
        if self.output is not None:
            claim_output(self.output, self.model_name, self.model_key)
        self.run_name = run_name or "umr_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model_name)
        self.log = log or (lambda message: None)
        root = (self.output / "cache") if self.output else None
        if root is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="umr-eval-")
            root = Path(self._tmp.name)
        self.store = EmbeddingStore(root, self.model_key, commit_every=self.config.commit_every,
                                    commit_seconds=self.config.commit_seconds, retry_errors=retry_errors)
        self.reranker, self.rerank_k = reranker, int(rerank_k)
        self.rerank_store = None
        if reranker is not None:
            if self.rerank_k < 1:
                raise ValueError(f"rerank_k must be at least 1, not {rerank_k}")
            self.reranker_key = reranker_key or default_reranker_key(reranker)
            self.rerank_store = RerankStore(root / "rerank", self.reranker_key, chunk_size=self.config.commit_every)
        # the latest pool's vectors, keyed by its content digest (a list's id() is reused once the
        # list is freed). One is enough: tasks sharing a pool come together, and the embedding
        # cache on disk serves any other order, so memory stays at one pool, not all of them.
        self._matrices: dict[str, tuple[np.ndarray, np.ndarray, dict[int, str]]] = {}
        # id(list) -> (the list itself, its digest); holding the list keeps its id from being reused
        self._pools: dict[int, tuple[list, str]] = {}
        self.timings = {"embed_s": 0.0, "search_s": 0.0, "score_s": 0.0, "write_s": 0.0}
        if reranker is not None:
            self.timings["rerank_s"] = 0.0

    # -- one task ------------------------------------------------------------------------------

    def _pool_digest(self, candidates: list) -> str:
        """The content digest of a candidate list (computed once per list object)."""
        entry = self._pools.get(id(candidates))
        if entry is None or entry[0] is not candidates:
            if self.output is not None:  # its ids go into TREC files: refuse unwritable ones up front
                for cand in candidates:
                    check_trec_id(cand.id, "candidate id")
            entry = (candidates, _pool_digest(candidates))
            self._pools[id(candidates)] = entry
            while len(self._pools) > self._POOLS_KEPT:
                self._pools.pop(next(iter(self._pools)))
        return entry[1]

    def check(self, tasks: Sequence[RetrievalTask]) -> None:
        """Raise ``ValueError`` for a task that cannot be scored or written, before any work.

        Its headline metric must be one the evaluator computes; with ``output``, its query and
        candidate ids must be writable to TREC files (no whitespace).
        """
        for task in tasks:
            try:
                headline_metric(task.headline)
                if self.output is not None:
                    for item in task.queries:
                        check_trec_id(item.id, "query id")
                    self._pool_digest(task.candidates)
            except ValueError as exc:
                raise ValueError(f"task {task.pool}/{task.name}: {exc}") from None

    def _candidate_matrix(self, candidates: list):
        key = self._pool_digest(candidates)
        if key not in self._matrices:
            vectors, kept, errors, spent = self.store.embed(
                self.embedder, candidates, batch_size=self.config.batch_size,
                show_progress_bar=self.config.show_progress, name=self.model_name)
            self.timings["embed_s"] += spent
            self._matrices = {key: (vectors, kept, errors)}
        return self._matrices[key]

    def evaluate_task(self, task: RetrievalTask) -> TaskOutcome:
        """One task at the model's dimension (an evaluator with ``dims``: see :meth:`evaluate_dims`)."""
        if self.dims is not None:
            raise ValueError("this evaluator sweeps dimensions: use evaluate_dims(task)")
        return self._evaluate_views(task, [None])[None]

    def evaluate_dims(self, task: RetrievalTask) -> dict[int, TaskOutcome]:
        """One task at every dimension of the sweep, embedded once."""
        if self.dims is None:
            raise ValueError("this evaluator has no dims to sweep: use evaluate_task(task)")
        return self._evaluate_views(task, self.dims)

    def _view_key(self, dim: int | None) -> str:
        """What a result depends on besides the task: the model (and its dimension in a sweep)."""
        key = self.model_key if dim is None else f"{self.model_key}|dim={dim}"
        return key if self.reranker is None else f"{key}|rerank={self.reranker_key}@{self.rerank_k}"

    def _view_folder(self, dim: int | None) -> Path | None:
        """Where a dimension's runs, tasks and reports go (the output itself without a sweep)."""
        if self.output is None:
            return None
        return self.output if dim is None else self.output / f"dim-{dim}"

    def _evaluate_views(self, task: RetrievalTask, dims: Sequence[int | None]) -> dict[int | None, TaskOutcome]:
        """The task scored at each of ``dims`` (None: the vectors as they are); what is not finished
        yet is embedded once, at the model's dimension, and scored from prefixes."""
        self.check([task])
        pool_digest = self._pool_digest(task.candidates)
        outcomes: dict[int | None, TaskOutcome] = {}
        todo = []
        for dim in dims:
            signature = _task_signature(task, self._view_key(dim), self.config, pool_digest)
            done_file = self._task_file(task, dim)
            if done_file is not None and done_file.is_file():
                previous = json.loads(done_file.read_text(encoding="utf-8"))
                if previous.get("signature") == signature and not self._worth_retrying(previous, task):
                    self.log(f"{_dim_tag(dim)}{task.pool}/{task.name}: already done, skipped")
                    outcomes[dim] = TaskOutcome(previous)
                    continue
            todo.append((dim, signature, done_file))
        if todo:
            t_start = time.perf_counter()
            cvecs, ckept, cerrors = self._candidate_matrix(task.candidates)
            qvecs, qkept, qerrors, spent = self.store.embed(
                self.embedder, task.queries, batch_size=self.config.batch_size,
                show_progress_bar=self.config.show_progress, name=self.model_name)
            self.timings["embed_s"] += spent
            for dim, signature, done_file in todo:
                outcomes[dim] = self._score(task, (_at_dim(qvecs, dim), qkept, qerrors),
                                            (_at_dim(cvecs, dim), ckept, cerrors),
                                            dim=dim, signature=signature, done_file=done_file, t_start=t_start)
        return {dim: outcomes[dim] for dim in dims}

    def _score(self, task: RetrievalTask, queries, candidates, *, dim: int | None, signature: str,
               done_file: Path | None, t_start: float) -> TaskOutcome:
        """Search, score and write one task from its embedded queries and candidates, each
        ``(vectors, kept positions, errors by position)``."""
        config = self.config
        headline, metric, metric_k = headline_metric(task.headline)
        qvecs, qkept, qerrors = queries
        cvecs, ckept, cerrors = candidates

        t0 = time.perf_counter()
        # BEIR searches one deeper when it drops the query itself, so that ``depth`` results remain
        scores, rows = search_exact(qvecs, cvecs, config.depth + int(task.ignore_identical_ids))
        kept_ids = [task.candidates[i].id for i in ckept]
        run = run_from_topk([task.queries[i].id for i in qkept], scores, rows, kept_ids)
        if task.ignore_identical_ids:
            run = drop_identical_ids(run, config.depth)
        t_search = time.perf_counter() - t0
        self.timings["search_s"] += t_search

        t0 = time.perf_counter()
        scored, dropped = scored_queries(task, run)
        # the configured metrics, plus the task's hit@k and its headline at its k
        wanted = {name: set(getattr(config, name)) for name in ("k_values", "ndcg_k", "mrr_k", "map_k")}
        wanted["k_values"].add(task.hit_k)
        if metric_k is not None:
            wanted[{"ndcg": "ndcg_k", "mrr": "mrr_k", "map": "map_k"}.get(metric, "k_values")].add(metric_k)
        bias_k = config.bias_k or task.hit_k

        def measure(ranked):
            per_query = evaluate_run(ranked, {q: task.qrels.get(q, {}) for q in scored},
                                     **{name: tuple(sorted(ks)) for name, ks in wanted.items()},
                                     relevance_level=config.relevance_level)
            rankings = {qid: trec_order(scores_) for qid, scores_ in ranked.items()}
            return mean_metrics(per_query), modality_bias(rankings, task.candidate_modalities(),
                                                          str(task.target_modality), bias_k)

        metrics, bias = measure(run)
        t_score = time.perf_counter() - t0
        self.timings["score_s"] += t_score

        reasons = [{"id": task.queries[i].id, "role": "query", "error": why}
                   for i, why in list(qerrors.items())[:FIRST_REASONS]]
        reasons += [{"id": task.candidates[i].id, "role": "candidate", "error": why}
                    for i, why in list(cerrors.items())[:FIRST_REASONS - len(reasons)]]
        result: dict[str, Any] = {
            "task": task.name, "dataset": task.dataset, "pool": task.pool, "category": task.category,
            "group": task.group, "target_modality": str(task.target_modality), "hit_k": task.hit_k,
            "main_metric": headline, "main_score": metrics.get(headline),
            "metrics": metrics, "modality_bias": bias,
            "n_queries": len(task.queries), "n_judged_queries": len(task.qrels),
            "n_candidates": len(task.candidates),
            "average": task.average, "ignore_identical_ids": task.ignore_identical_ids,
            "n_scored_queries": len(scored), "dropped_queries": dropped,
            "query_errors": {task.queries[i].id: why for i, why in qerrors.items()},
            "candidate_errors": len(cerrors),
            "failures": {"queries": len(qerrors), "candidates": len(cerrors), "first": reasons},
            "seconds": {"search": t_search, "score": t_score, "total": time.perf_counter() - t_start},
            "signature": signature, "metadata": task.metadata,
        }
        reranked = None
        if self.reranker is not None:
            reranked, pair_errors = self._rerank(task, run)
            rr_metrics, rr_bias = measure(reranked)
            result["rerank"] = {"model": self.reranker_key, "k": self.rerank_k, "main_score": rr_metrics.get(headline),
                                "metrics": rr_metrics, "modality_bias": rr_bias, "pair_errors": pair_errors}
        if dim is not None:
            result["dim"] = dim
        if self.output is not None:
            t0 = time.perf_counter()
            tags = {q.id: task.run_tag for q in task.queries}
            runs = self._view_folder(dim) / "runs" / task.pool
            run_name = self.run_name if dim is None else f"{self.run_name}_dim{dim}"
            write_run(runs / f"{task.name}.trec", run, run_name=run_name)
            write_run(runs / f"{task.name}.uniir.trec", run, run_name=run_name, task_tags=tags)
            if reranked is not None:
                write_run(runs / f"{task.name}.rerank.trec", reranked, run_name=f"{run_name}_rerank")
            done_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(done_file, json.dumps(result, indent=1))
            self.timings["write_s"] += time.perf_counter() - t0
        self.log(task_line(result))
        return TaskOutcome(result, run)

    def _worth_retrying(self, previous: dict[str, Any], task: RetrievalTask) -> bool:
        """Whether a finished task with failures is stale: an item it lost would now be embedded
        again, or has been embedded since (by another task sharing it)."""
        failures = previous.get("failures") or {}
        for role, items in (("queries", task.queries), ("candidates", task.candidates)):
            if failures.get(role):
                standing, retry = self.store.failure_state(items)
                if retry or standing != failures[role]:
                    return True
        return False

    def _rerank(self, task: RetrievalTask, run: dict[str, dict[str, float]]):
        """The run with each query's top ``rerank_k`` reranked (scores: ``n - position``), and the
        pairs that could not be scored (``{query id: {candidate id: reason}}``)."""
        queries = {q.id: q for q in task.queries}
        candidates = {c.id: c for c in task.candidates}
        rankings = {qid: trec_order(scores_) for qid, scores_ in run.items()}
        pairs, where = [], []
        for qid, ranking in rankings.items():
            for position, cid in enumerate(ranking[: self.rerank_k]):
                pairs.append(Pair(queries[qid], candidates[cid], task.name))
                where.append((qid, position))
        t0 = time.perf_counter()
        scores, errors, _ = self.rerank_store.score(self.reranker, pairs, batch_size=self.config.batch_size,
                                                     show_progress_bar=self.config.show_progress)
        self.timings["rerank_s"] += time.perf_counter() - t0
        by_query = {qid: np.full(len(ranking), np.nan, dtype=np.float32) for qid, ranking in rankings.items()}
        failed: dict[str, dict[str, str]] = {}
        for j, (qid, position) in enumerate(where):
            by_query[qid][position] = scores[j]
            if j in errors:
                failed.setdefault(qid, {})[rankings[qid][position]] = errors[j]
        reranked = {}
        for qid, ranking in rankings.items():
            order = reranked_order(by_query[qid], min(self.rerank_k, len(ranking)))
            reranked[qid] = {ranking[i]: float(len(order) - rank) for rank, i in enumerate(order)}
        return reranked, failed

    def _task_file(self, task: RetrievalTask, dim: int | None = None) -> Path | None:
        folder = self._view_folder(dim)
        return None if folder is None else folder / "tasks" / task.pool / f"{task.name}.json"

    # -- many tasks ------------------------------------------------------------------------------

    def evaluate(self, tasks: Sequence[RetrievalTask], *, benchmark: str = "custom",
                 write_reports: bool = True) -> dict[str, Any]:
        """Every task; the scores document (written as ``scores.json`` with the reports). With
        ``dims``: each dimension's document under ``dim-N/``, and the sweep (:func:`sweep_scores`,
        written as ``dims.json`` and ``dims.md``) is returned."""
        t0 = time.perf_counter()
        self.check(tasks)
        views: list[int | None] = [None] if self.dims is None else list(self.dims)
        results: dict[int | None, list[dict[str, Any]]] = {dim: [] for dim in views}
        for task in tasks:
            for dim, outcome in self._evaluate_views(task, views).items():
                results[dim].append(outcome.result)
        by_dim = {}
        for dim in views:
            scores = summarize(results[dim], model=self.model_name if dim is None else f"{self.model_name} (dim {dim})",
                               benchmark=benchmark, config=self.config, model_key=self._view_key(dim))
            if dim is not None:
                scores["dim"] = dim
            scores["timings"] = {**self.timings, "total_s": time.perf_counter() - t0}
            if self.output is not None and write_reports:
                t1 = time.perf_counter()
                write_report_files(scores, self._view_folder(dim))
                scores["timings"]["report_s"] = time.perf_counter() - t1
                (self._view_folder(dim) / "scores.json").write_text(json.dumps(scores, indent=1), encoding="utf-8")
            by_dim[dim] = scores
        if self.dims is None:
            return by_dim[None]
        sweep = sweep_scores(by_dim, model=self.model_name, model_key=self.model_key, benchmark=benchmark)
        sweep["timings"] = {**self.timings, "total_s": time.perf_counter() - t0}
        if self.output is not None and write_reports:
            (self.output / "dims.md").write_text(sweep_report(sweep), encoding="utf-8")
            (self.output / "dims.json").write_text(json.dumps(sweep, indent=1), encoding="utf-8")
        return sweep


def _at_dim(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """The vectors as a sweep's dimension sees them (None: as they are)."""
    return vectors if dim is None else renormalised_prefix(vectors, dim)


def _dim_tag(dim: int | None) -> str:
    return "" if dim is None else f"[dim {dim}] "


def sweep_scores(by_dim: dict[int, dict[str, Any]], *, model: str, model_key: str,
                 benchmark: str) -> dict[str, Any]:
    """A dimension sweep in one document: per task and per pool mean, the headline and NDCG@10 at
    each dimension (keys are the dimensions as text), plus where each dimension's own scores are."""
    dims = sorted(by_dim)
    tasks: dict[tuple[str, str], dict[str, Any]] = {}
    for dim in dims:
        for r in by_dim[dim]["tasks"]:
            row = tasks.setdefault((r["pool"], r["task"]), {"task": r["task"], "pool": r["pool"],
                                                             "main_metric": r["main_metric"], "main_score": {},
                                                             "ndcg@10": {}, "failed": False})
            row["main_score"][str(dim)] = r["main_score"]
            row["ndcg@10"][str(dim)] = r["metrics"].get("ndcg@10")
            row["failed"] = row["failed"] or bool(failure_note(r))
    averages = {pool: {key: {str(dim): by_dim[dim]["averages"][pool][key] for dim in dims}
                       for key in ("main_score", "ndcg@10", "modality_bias")}
                for pool in by_dim[dims[0]]["averages"]}
    return {"model": model, "model_key": model_key, "benchmark": benchmark, "dims": dims,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "folders": {str(dim): f"dim-{dim}" for dim in dims},
            "tasks": list(tasks.values()), "averages": averages}


def scored_queries(task: RetrievalTask, run: dict[str, dict[str, float]]) -> tuple[list[str], dict[str, int]]:
    """The queries a task's means are taken over, and how many were left out, by why.

    ``"run"`` (BEIR, trec_eval): queries that were run and have judgements; ``absent`` counts
    judged query ids the task does not hold, ``failed`` judged queries that could not be
    embedded, ``unjudged`` queries run without judgements. ``"queries"`` (UniIR): every query.
    """
    qids = [q.id for q in task.queries]
    if task.average == "queries":
        return qids, {"absent": 0, "failed": 0, "unjudged": 0}
    if task.average != "run":
        raise ValueError(f"task {task.name}: average must be 'run' or 'queries', not {task.average!r}")
    held = set(qids)
    scored = [q for q in qids if q in run and q in task.qrels]
    return scored, {"absent": sum(q not in held for q in task.qrels),
                    "failed": sum(q not in run and q in task.qrels for q in qids),
                    "unjudged": sum(q in run and q not in task.qrels for q in qids)}


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def task_line(result: dict[str, Any]) -> str:
    """One line about a finished task: its headline (and NDCG@10), bias, queries scored, failures."""
    metrics = result["metrics"]
    shown = [(result["main_metric"], result["main_score"])]
    if result["main_metric"] != "ndcg@10":
        shown.append(("ndcg@10", metrics.get("ndcg@10")))
    bias = result["modality_bias"]
    line = (f"{_dim_tag(result.get('dim'))}{result['pool']}/{result['task']}: " + ", ".join(f"{n} = {_pct(v)}" for n, v in shown)
            + f", modality bias@{bias['k']} = {_pct(bias['bias'], 1)}{'' if bias['bias'] is None else '%'}")
    if "rerank" in result:
        line += f", reranked {result['main_metric']} = {_pct(result['rerank']['main_score'])}"
    note = dropped_note(result)
    if note:
        line += f"; {note}"
    failed = failure_note(result)
    return line + (f"; FAILED: {failed}" if failed else "")


def claim_output(output: Path, model_name: str, key: str) -> None:
    """Make ``output`` this model's folder, or refuse it (``ValueError``) if another model's
    results are there: a second model would overwrite the first one's runs and reports."""
    owner_file = output / "model.json"
    scores = output / "scores.json"
    if owner_file.is_file():
        owner = json.loads(owner_file.read_text(encoding="utf-8")).get("key")
    elif scores.is_file():  # written before folders recorded their model: its name is all there is
        owner = json.loads(scores.read_text(encoding="utf-8")).get("model")
        owner = None if owner in (None, model_name) else owner
    else:
        owner = None
    if owner is not None and owner != key:
        raise ValueError(f"{output} holds the results of model {owner!r}, not {key!r}: give this model "
                         f"its own output folder (e.g. {output.with_name(output.name + '-' + _safe(key))})")
    if owner_file.is_file():
        return
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(owner_file, json.dumps({"model": model_name, "key": key}))


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("._") or "model"


def summarize(results: list[dict[str, Any]], *, model: str, benchmark: str,
              config: EvalConfig | None = None, model_key: str | None = None) -> dict[str, Any]:
    """The scores document: every task, plus averages by pool, category and UMRB group.

    A mean leaves out tasks without a score (``None``: nothing was scored) and is ``None`` when
    no task has one; ``n_failed_tasks`` counts the tasks in which some item failed.
    """
    def block(members: list[dict[str, Any]]) -> dict[str, Any]:
        return {"main_score": _mean(r["main_score"] for r in members),
                "ndcg@10": _mean(r["metrics"].get("ndcg@10") for r in members),
                "n_tasks": len(members)}

    averages: dict[str, dict[str, Any]] = {}
    for pool in sorted({r["pool"] for r in results}):
        in_pool = [r for r in results if r["pool"] == pool]
        by_cat = {cat: block([r for r in in_pool if r["category"] == cat])
                  for cat in sorted({r["category"] for r in in_pool})}
        by_group = {group: block(members) for group, cats in UMRB_GROUPS.items()
                    if (members := [r for r in in_pool if r["category"] in cats])}
        averages[pool] = {**block(in_pool), "modality_bias": _mean(r["modality_bias"]["bias"] for r in in_pool),
                          "n_failed_tasks": sum(bool(failure_note(r)) for r in in_pool),
                          "by_category": by_cat, "by_group": by_group}
        reranked = [r for r in in_pool if "rerank" in r]
        if reranked:  # the reranked headline beside the retriever's, per pool and category
            averages[pool]["rerank_main_score"] = _mean(r["rerank"]["main_score"] for r in reranked)
            averages[pool]["rerank_ndcg@10"] = _mean(r["rerank"]["metrics"].get("ndcg@10") for r in reranked)
            for cat, block_ in by_cat.items():
                block_["rerank_main_score"] = _mean(r["rerank"]["main_score"] for r in reranked
                                                    if r["category"] == cat)
    return {"model": model, "model_key": model_key or model, "benchmark": benchmark,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": asdict(config) if config else None,
            "tasks": results, "averages": averages}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def evaluate(model, tasks: Sequence[RetrievalTask], *, output: str | Path | None = None,
             config: EvalConfig | None = None, benchmark: str = "custom",
             log: Callable[[str], None] | None = None, model_key: str | None = None,
             retry_errors: bool = False, reranker=None, rerank_k: int = 10,
             dims: Sequence[int] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (any :class:`~umr.models.base.Embedder`) on ``tasks``, optionally reranking
    each query's top ``rerank_k`` with ``reranker`` or sweeping Matryoshka ``dims``; see the module
    doc (and :class:`Evaluator` for ``model_key``, ``retry_errors`` and ``dims``)."""
    return Evaluator(model, output=output, config=config, log=log, model_key=model_key,
                     retry_errors=retry_errors, reranker=reranker, rerank_k=rerank_k,
                     dims=dims).evaluate(tasks, benchmark=benchmark)
