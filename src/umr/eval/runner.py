"""Run an embedder over retrieval tasks: embed (cached, resumable), search exactly, score, write.

>>> from umr.eval import evaluate, load_beir_task
>>> results = evaluate(model, [load_beir_task("data/scifact")], output="out/")   # doctest: +SKIP

The output folder holds ``cache/`` (embeddings, reused on the next run), ``runs/<pool>/<task>.trec``
(TREC run) and ``runs/<pool>/<task>.uniir.trec`` (UniIR's 7-column variant with the task id),
``tasks/<pool>/<task>.json`` (one finished task; a rerun skips it), ``scores.json`` (every score),
``results.md`` (the papers' tables) and ``report.html`` (self-contained, with charts).
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

from ..index.exact import search_exact
from .cache import EmbeddingStore, fingerprint
from .metrics import evaluate_run, mean_metrics, modality_bias, trec_order
from .tasks import RetrievalTask
from .trec import check_trec_id, run_from_topk, write_run


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
    chunk_size: int = 4096
    show_progress: bool = False

    def signature(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "chunk_size", "show_progress")}
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
        h.update(f"{cand.id}\x00{cand.text}\x00{image_key}\x01".encode("utf-8", "replace"))
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
    for item in task.queries:
        h.update(item.id.encode() + fingerprint(item).encode())
    h.update(pool_digest.encode())
    for qid in sorted(task.qrels):
        h.update(json.dumps([qid, sorted(task.qrels[qid].items())]).encode())
    return h.hexdigest()[:16]


class Evaluator:
    """Evaluates one model on tasks; with ``output`` it caches, resumes and writes files.

    ``model_key`` names the model *with the options that change its vectors* (dtype, image token
    bounds, ...); it keys the embedding cache and the finished-task signatures, so the same model
    loaded differently never reuses the other's vectors or results. Default: the model's name.

    With a ``reranker`` (:class:`~umr.rerank.Reranker`) each query's top ``rerank_k`` candidates
    are reranked too, and every task reports both rankings' scores (``result["rerank"]``); rerank
    scores are cached under ``cache/rerank`` (keyed by ``reranker_key``) and resumable.
    """

    #: how many candidate lists' digests are remembered (each kept alive beside its digest)
    _POOLS_KEPT = 64

    def __init__(self, model, *, output: str | Path | None = None, config: EvalConfig | None = None,
                 run_name: str | None = None, log: Callable[[str], None] | None = None,
                 model_key: str | None = None, reranker=None, rerank_k: int = 10,
                 reranker_key: str | None = None):
        self.model = model
        self.config = config or EvalConfig()
        self.output = Path(output) if output is not None else None
        self.model_name = str(getattr(model, "name", type(model).__name__))
        self.model_key = model_key or self.model_name
        self.run_name = run_name or "umr_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model_name)
        self.log = log or (lambda message: None)
        root = (self.output / "cache") if self.output else None
        if root is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="umr-eval-")
            root = Path(self._tmp.name)
        self.store = EmbeddingStore(root, self.model_key, chunk_size=self.config.chunk_size)
        self.reranker, self.rerank_k = reranker, int(rerank_k)
        self.rerank_store = None
        if reranker is not None:
            from ..rerank.cache import RerankStore
            from ..rerank.registry import reranker_key as default_key

            if self.rerank_k < 1:
                raise ValueError(f"rerank_k must be at least 1, not {rerank_k}")
            self.reranker_key = reranker_key or default_key(reranker)
            self.rerank_store = RerankStore(root / "rerank", self.reranker_key,
                                            chunk_size=min(self.config.chunk_size, 1024))
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
                self.model, candidates, batch_size=self.config.batch_size,
                show_progress_bar=self.config.show_progress)
            self.timings["embed_s"] += spent
            self._matrices = {key: (vectors, kept, errors)}
        return self._matrices[key]

    def evaluate_task(self, task: RetrievalTask) -> TaskOutcome:
        config = self.config
        self.check([task])
        headline, metric, metric_k = headline_metric(task.headline)
        key = self.model_key if self.reranker is None else f"{self.model_key}|rerank={self.reranker_key}@{self.rerank_k}"
        signature = _task_signature(task, key, config, self._pool_digest(task.candidates))
        done_file = self._task_file(task)
        if done_file is not None and done_file.is_file():
            previous = json.loads(done_file.read_text(encoding="utf-8"))
            if previous.get("signature") == signature:
                self.log(f"{task.pool}/{task.name}: already done, skipped")
                return TaskOutcome(previous)

        t_start = time.perf_counter()
        cvecs, ckept, cerrors = self._candidate_matrix(task.candidates)
        qvecs, qkept, qerrors, spent = self.store.embed(
            self.model, task.queries, batch_size=config.batch_size, show_progress_bar=config.show_progress)
        self.timings["embed_s"] += spent

        t0 = time.perf_counter()
        scores, rows = search_exact(qvecs, cvecs, config.depth)
        kept_ids = [task.candidates[i].id for i in ckept]
        run = run_from_topk([task.queries[i].id for i in qkept], scores, rows, kept_ids)
        t_search = time.perf_counter() - t0
        self.timings["search_s"] += t_search

        t0 = time.perf_counter()
        # the configured metrics, plus the task's hit@k and its headline at its k
        wanted = {name: set(getattr(config, name)) for name in ("k_values", "ndcg_k", "mrr_k", "map_k")}
        wanted["k_values"].add(task.hit_k)
        if metric_k is not None:
            wanted[{"ndcg": "ndcg_k", "mrr": "mrr_k", "map": "map_k"}.get(metric, "k_values")].add(metric_k)
        bias_k = config.bias_k or task.hit_k

        def measure(ranked):
            per_query = evaluate_run(ranked, task.qrels, **{name: tuple(sorted(ks)) for name, ks in wanted.items()},
                                     relevance_level=config.relevance_level)
            rankings = {qid: trec_order(scores_) for qid, scores_ in ranked.items()}
            return mean_metrics(per_query), modality_bias(rankings, task.candidate_modalities(),
                                                          str(task.target_modality), bias_k)

        metrics, bias = measure(run)
        t_score = time.perf_counter() - t0
        self.timings["score_s"] += t_score

        result: dict[str, Any] = {
            "task": task.name, "dataset": task.dataset, "pool": task.pool, "category": task.category,
            "group": task.group, "target_modality": str(task.target_modality), "hit_k": task.hit_k,
            "main_metric": headline, "main_score": metrics.get(headline, 0.0),
            "metrics": metrics, "modality_bias": bias,
            "n_queries": len(task.queries), "n_judged_queries": len(task.qrels),
            "n_candidates": len(task.candidates),
            "query_errors": {task.queries[i].id: why for i, why in qerrors.items()},
            "candidate_errors": len(cerrors),
            "seconds": {"search": t_search, "score": t_score, "total": time.perf_counter() - t_start},
            "signature": signature, "metadata": task.metadata,
        }
        reranked = None
        if self.reranker is not None:
            reranked, pair_errors = self._rerank(task, run)
            rr_metrics, rr_bias = measure(reranked)
            result["rerank"] = {"model": self.reranker_key, "k": self.rerank_k, "main_score": rr_metrics.get(headline, 0.0),
                                "metrics": rr_metrics, "modality_bias": rr_bias, "pair_errors": pair_errors}
        if self.output is not None:
            t0 = time.perf_counter()
            tags = {q.id: task.run_tag for q in task.queries}
            write_run(self.output / "runs" / task.pool / f"{task.name}.trec", run, run_name=self.run_name)
            write_run(self.output / "runs" / task.pool / f"{task.name}.uniir.trec", run, run_name=self.run_name,
                      task_tags=tags)
            if reranked is not None:
                write_run(self.output / "runs" / task.pool / f"{task.name}.rerank.trec", reranked,
                          run_name=f"{self.run_name}_rerank")
            done_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = done_file.with_name(done_file.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
            tmp.replace(done_file)
            self.timings["write_s"] += time.perf_counter() - t0
        shown = [(result["main_metric"], result["main_score"])]
        if result["main_metric"] != "ndcg@10":
            shown.append(("ndcg@10", metrics.get("ndcg@10", 0.0)))
        if reranked is not None:
            shown.append((f"reranked {headline}", result["rerank"]["main_score"]))
        self.log(f"{task.pool}/{task.name}: " + ", ".join(f"{n} = {100 * v:.2f}" for n, v in shown)
                 + f", modality bias@{bias_k} = {100 * bias['bias']:.1f}%")
        return TaskOutcome(result, run)

    def _rerank(self, task: RetrievalTask, run: dict[str, dict[str, float]]):
        """The run with each query's top ``rerank_k`` reranked (scores: ``n - position``), and the
        pairs that could not be scored (``{query id: {candidate id: reason}}``)."""
        from ..rerank.base import Pair, reranked_order

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

    def _task_file(self, task: RetrievalTask) -> Path | None:
        if self.output is None:
            return None
        return self.output / "tasks" / task.pool / f"{task.name}.json"

    # -- many tasks ------------------------------------------------------------------------------

    def evaluate(self, tasks: Sequence[RetrievalTask], *, benchmark: str = "custom",
                 write_reports: bool = True) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.check(tasks)
        results = [self.evaluate_task(task).result for task in tasks]
        scores = summarize(results, model=self.model_name, benchmark=benchmark, config=self.config)
        scores["timings"] = {**self.timings, "total_s": time.perf_counter() - t0}
        if self.output is not None and write_reports:
            from .report import write_reports as _write

            t1 = time.perf_counter()
            _write(scores, self.output)
            scores["timings"]["report_s"] = time.perf_counter() - t1
            (self.output / "scores.json").write_text(json.dumps(scores, indent=1), encoding="utf-8")
        return scores


def summarize(results: list[dict[str, Any]], *, model: str, benchmark: str,
              config: EvalConfig | None = None) -> dict[str, Any]:
    """The scores document: every task, plus averages by pool, category and UMRB group."""
    from .tasks import UMRB_GROUPS

    averages: dict[str, dict[str, Any]] = {}
    for pool in sorted({r["pool"] for r in results}):
        in_pool = [r for r in results if r["pool"] == pool]
        by_cat: dict[str, dict[str, float]] = {}
        for cat in sorted({r["category"] for r in in_pool}):
            members = [r for r in in_pool if r["category"] == cat]
            by_cat[cat] = {"main_score": _mean(r["main_score"] for r in members),
                           "ndcg@10": _mean(r["metrics"].get("ndcg@10", 0.0) for r in members),
                           "n_tasks": len(members)}
        by_group = {}
        for group, cats in UMRB_GROUPS.items():
            members = [r for r in in_pool if r["category"] in cats]
            if members:
                by_group[group] = {"main_score": _mean(r["main_score"] for r in members),
                                   "ndcg@10": _mean(r["metrics"].get("ndcg@10", 0.0) for r in members),
                                   "n_tasks": len(members)}
        reranked = [r for r in in_pool if "rerank" in r]
        if reranked:
            by_cat_rr = {cat: _mean(r["rerank"]["main_score"] for r in reranked if r["category"] == cat)
                         for cat in by_cat}
            for cat, value in by_cat_rr.items():
                by_cat[cat]["rerank_main_score"] = value
        averages[pool] = {"main_score": _mean(r["main_score"] for r in in_pool),
                          "ndcg@10": _mean(r["metrics"].get("ndcg@10", 0.0) for r in in_pool),
                          "modality_bias": _mean(r["modality_bias"]["bias"] for r in in_pool),
                          "n_tasks": len(in_pool), "by_category": by_cat, "by_group": by_group}
        if reranked:
            averages[pool]["rerank_main_score"] = _mean(r["rerank"]["main_score"] for r in reranked)
            averages[pool]["rerank_ndcg@10"] = _mean(r["rerank"]["metrics"].get("ndcg@10", 0.0) for r in reranked)
    return {"model": model, "benchmark": benchmark,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": asdict(config) if config else None,
            "tasks": results, "averages": averages}


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


def evaluate(model, tasks: Sequence[RetrievalTask], *, output: str | Path | None = None,
             config: EvalConfig | None = None, benchmark: str = "custom",
             log: Callable[[str], None] | None = None, model_key: str | None = None,
             reranker=None, rerank_k: int = 10) -> dict[str, Any]:
    """Evaluate ``model`` (any :class:`~umr.models.base.Embedder`) on ``tasks``, optionally reranking
    each query's top ``rerank_k`` with ``reranker``; see the module doc (and :class:`Evaluator`)."""
    return Evaluator(model, output=output, config=config, log=log, model_key=model_key, reranker=reranker,
                     rerank_k=rerank_k).evaluate(tasks, benchmark=benchmark)
