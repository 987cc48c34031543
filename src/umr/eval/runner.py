"""Run an embedder over retrieval tasks: embed (cached, resumable), search exactly, score, write.

>>> from umr.eval import evaluate, load_beir_task
>>> results = evaluate(model, [load_beir_task("data/scifact")], output="out/")   # doctest: +SKIP

The output folder (:mod:`umr.eval.output`) holds ``cache/`` (embeddings, reused on the next run),
the TREC runs, one file per finished task (a rerun skips it), ``scores.json`` (every score),
``results.md`` (the papers' tables) and ``report.html`` (self-contained, with charts). It belongs
to one model (``model.json``): reusing it for another model, or the same one with other options,
is refused rather than overwriting the first model's results. A Matryoshka sweep (``dims``) writes
each dimension's runs, tasks and reports under ``dim-N/`` and the sweep in ``dims.json`` / ``dims.md``.

The evaluator runs the stages; each lives in its own module: task scoring and what is computed
(:mod:`umr.eval.scoring`), the rerank stage (:mod:`umr.eval.rerank_stage`), the scores documents
(:mod:`umr.eval.summary`) and the output folder (:mod:`umr.eval.output`). Means follow each
benchmark's reference (see :mod:`umr.eval.scoring`).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.results import TaskResult
from ..data.tasks import RetrievalTask
from ..index.embedding import ChunkEmbedder, LocalEmbedder
from ..models.matryoshka import renormalised_prefix, sweep_dims
from ..models.multivector import MultiVectorEmbedder
from ..rerank.registry import reranker_key as default_reranker_key
from .cache import EmbeddingStore, model_key as key_of
from .late_interaction import TokenStore, maxsim_search
from .notes import dim_tag, task_line
from .output import OutputFolder, claim_output
from .rerank_stage import RerankStage
from .scoring import FIRST_REASONS, EvalConfig, Run, headline_metric, measure, scored_queries, search_run, task_result
from .signatures import pool_digest, task_signature
from .summary import summarize, sweep_scores
from .trec import check_trec_id

#: the names this module held before it was split, for code that imports them from here
__all__ = ["FIRST_REASONS", "EvalConfig", "Evaluator", "TaskOutcome", "claim_output", "evaluate", "headline_metric",
           "scored_queries", "summarize", "sweep_scores", "task_line"]


@dataclass
class TaskOutcome:
    """One task's scores plus the run behind them (empty for a task reused from an earlier run)."""

    result: TaskResult
    run: Run = field(default_factory=dict)


class Evaluator:
    """Evaluates one model on tasks; with ``output`` it caches, resumes and writes files.

    ``model_key`` names the model *with the options that change its vectors* (dtype, image token
    bounds, ...; see :func:`umr.eval.cache.model_key`, the default); it keys the embedding cache
    and the finished-task signatures, so the same model loaded differently never reuses the
    other's vectors or results. An ``output`` folder written for another key is refused
    (``ValueError``). ``retry_errors`` embeds again every item that failed before (an item
    whose image file changed since it failed is always tried again).

    With a ``reranker`` (:class:`~umr.rerank.Reranker`) each query's top ``rerank_k`` candidates
    are reranked too, and every task reports both rankings' scores (``result.rerank``); rerank
    scores are cached under ``cache/rerank`` (keyed by ``reranker_key``) and resumable.

    With ``dims`` (a Matryoshka model's dimension sweep) every item is embedded once at the
    model's full dimension (cached as any run's vectors are) and each dimension is scored from
    the vectors' renormalised prefixes; each writes its runs, tasks and reports under
    ``OUTPUT/dim-N/`` (apart from each other and from a run without ``dims``), and
    :meth:`evaluate` returns the sweep (``dims.json``, ``dims.md``: one column per dimension).
    ``embedder`` (a :class:`~umr.index.embedding.ChunkEmbedder`, e.g. a
    :class:`~umr.index.ray_embed.RayEmbedder`) runs the model elsewhere; default: this process.

    A late-interaction ``model`` (:class:`~umr.models.multivector.MultiVectorEmbedder`) is scored
    by exact MaxSim over its token vectors, cached in the same folder
    (:mod:`umr.eval.late_interaction`); ``dims`` and ``embedder`` do not apply to it (``ValueError``).
    """

    #: how many candidate lists' digests are remembered (each kept alive beside its digest)
    _POOLS_KEPT = 64

    def __init__(self, model, *, output: str | Path | None = None, config: EvalConfig | None = None,
                 run_name: str | None = None, log: Callable[[str], None] | None = None,
                 model_key: str | None = None, retry_errors: bool = False, reranker=None,
                 rerank_k: int = 10, reranker_key: str | None = None, dims: Sequence[int] | None = None,
                 embedder: ChunkEmbedder | None = None):
        self.model = model
        late_interaction = isinstance(model, MultiVectorEmbedder)
        if late_interaction and (dims is not None or embedder is not None):
            raise ValueError(f"model {getattr(model, 'name', '')!r} is a late-interaction (multi-vector) model: "
                             f"{'a dimension sweep' if dims is not None else 'another embedder (Ray)'} does not "
                             f"apply to its token vectors; evaluate it without")
        #: where the model runs (this process, or Ray workers): chunks of items in, vectors out
        self.embedder = embedder if embedder is not None else LocalEmbedder(model)
        #: a Matryoshka sweep's dimensions (each scored from the full vectors' prefixes), or None
        self.dims = sweep_dims(model, dims) if dims is not None else None
        self.config = config or EvalConfig()
        self.model_name = str(getattr(model, "name", type(model).__name__))
        self.model_key = model_key or key_of(model)
        self.retry_errors = retry_errors
        run_name = run_name or "umr_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model_name)
        self.output = Path(output) if output is not None else None
        #: where runs, tasks and reports are written, or None (nothing is written)
        self.folder = None if self.output is None else OutputFolder(self.output, model_name=self.model_name,
                                                                    key=self.model_key, run_name=run_name)
        self.log = log or (lambda message: None)
        if self.output is not None:
            root = self.output / "cache"
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="umr-eval-")
            root = Path(self._tmp.name)
        self.store = EmbeddingStore(root, self.model_key, commit_every=self.config.commit_every,
                                    commit_seconds=self.config.commit_seconds, retry_errors=retry_errors)
        #: a late-interaction model's token vectors (beside ``store``, which holds where they are), or None
        self.tokens = TokenStore(self.store) if late_interaction else None
        #: the rerank stage (with a ``reranker``), or None
        self.rerank_stage = None if reranker is None else RerankStage(
            reranker, k=int(rerank_k), key=reranker_key or default_reranker_key(reranker),
            root=root / "rerank", chunk_size=self.config.commit_every)
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
            entry = (candidates, pool_digest(candidates))
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

    def _embed(self, items: list) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """``(vectors, kept positions, errors by position)`` of ``items``, through the cache; a
        late-interaction model's "vectors" are its items' token spans (:class:`TokenStore`)."""
        if self.tokens is not None:
            vectors, kept, errors, spent = self.tokens.embed(self.model, items, batch_size=self.config.batch_size,
                                                             show_progress_bar=self.config.show_progress)
        else:
            vectors, kept, errors, spent = self.store.embed(
                self.embedder, items, batch_size=self.config.batch_size,
                show_progress_bar=self.config.show_progress, name=self.model_name)
        self.timings["embed_s"] += spent
        return vectors, kept, errors

    def _candidate_matrix(self, candidates: list) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        key = self._pool_digest(candidates)
        if key not in self._matrices:
            self._matrices = {key: self._embed(candidates)}
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
        return key if self.rerank_stage is None else f"{key}|{self.rerank_stage.tag}"

    def _evaluate_views(self, task: RetrievalTask, dims: Sequence[int | None]) -> dict[int | None, TaskOutcome]:
        """The task scored at each of ``dims`` (None: the vectors as they are); what is not finished
        yet is embedded once, at the model's dimension, and scored from prefixes."""
        self.check([task])
        pool = self._pool_digest(task.candidates)
        outcomes: dict[int | None, TaskOutcome] = {}
        todo = []
        for dim in dims:
            signature = task_signature(task, self._view_key(dim), self.config, pool)
            previous = self.folder.finished(task, dim, signature) if self.folder is not None else None
            if previous is not None and not self._worth_retrying(previous, task):
                self.log(f"{dim_tag(dim)}{task.pool}/{task.name}: already done, skipped")
                outcomes[dim] = TaskOutcome(previous)
            else:
                todo.append((dim, signature))
        if todo:
            t_start = time.perf_counter()
            candidates = self._candidate_matrix(task.candidates)
            queries = self._embed(task.queries)
            for dim, signature in todo:
                outcomes[dim] = self._score(task, queries, candidates, dim=dim, signature=signature, t_start=t_start)
        return {dim: outcomes[dim] for dim in dims}

    def _score(self, task: RetrievalTask, queries, candidates, *, dim: int | None, signature: str,
               t_start: float) -> TaskOutcome:
        """Search, score (and rerank) and write one task from its embedded queries and candidates,
        each ``(vectors, kept positions, errors by position)``; ``dim`` picks a sweep's prefix."""
        (qvecs, qkept, qerrors), (cvecs, ckept, cerrors) = queries, candidates
        t0 = time.perf_counter()
        if self.tokens is not None:  # exact MaxSim over the cached token vectors
            tokens = self.tokens
            run = search_run(task, (tokens.read(qvecs), qkept), (cvecs, ckept), self.config.depth,
                             search=lambda q, c, k: maxsim_search(q, tokens, c, k))
        else:
            run = search_run(task, (_at_dim(qvecs, dim), qkept), (_at_dim(cvecs, dim), ckept), self.config.depth)
        t_search = time.perf_counter() - t0
        self.timings["search_s"] += t_search

        t0 = time.perf_counter()
        scored, dropped = scored_queries(task, run)
        metrics, bias = measure(task, self.config, run, scored)
        t_score = time.perf_counter() - t0
        self.timings["score_s"] += t_score
        result = task_result(task, metrics=metrics, bias=bias, scored=scored, dropped=dropped, query_errors=qerrors,
                             candidate_errors=cerrors, signature=signature, dim=dim,
                             seconds={"search": t_search, "score": t_score, "total": time.perf_counter() - t_start})
        reranked = None
        stage = self.rerank_stage
        if stage is not None:
            reranked, pair_errors, spent = stage.rerank(task, run, batch_size=self.config.batch_size,
                                                        show_progress=self.config.show_progress)
            self.timings["rerank_s"] += spent
            result.rerank = stage.scores(result.main_metric, *measure(task, self.config, reranked, scored), pair_errors)
        if self.folder is not None:
            t0 = time.perf_counter()
            self.folder.write_task(task, result, run, reranked)
            self.timings["write_s"] += time.perf_counter() - t0
        self.log(task_line(result))
        return TaskOutcome(result, run)

    def _worth_retrying(self, previous: TaskResult, task: RetrievalTask) -> bool:
        """Whether a finished task with failures is stale: an item it lost would now be embedded
        again, or has been embedded since (by another task sharing it)."""
        failures = previous.failures
        for failed, items in ((failures.queries, task.queries), (failures.candidates, task.candidates)):
            if failed:
                standing, retry = self.store.failure_state(items)
                if retry or standing != failed:
                    return True
        return False

    # -- many tasks ------------------------------------------------------------------------------

    def evaluate(self, tasks: Sequence[RetrievalTask], *, benchmark: str = "custom",
                 write_reports: bool = True) -> dict[str, Any]:
        """Every task; the scores document (written as ``scores.json`` with the reports). With
        ``dims``: each dimension's document under ``dim-N/``, and the sweep (:func:`sweep_scores`,
        written as ``dims.json`` and ``dims.md``) is returned."""
        t0 = time.perf_counter()
        self.check(tasks)
        views: list[int | None] = [None] if self.dims is None else list(self.dims)
        results: dict[int | None, list[TaskResult]] = {dim: [] for dim in views}
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
            if self.folder is not None and write_reports:
                self.folder.write_scores(scores, dim)
            by_dim[dim] = scores
        if self.dims is None:
            return by_dim[None]
        sweep = sweep_scores(by_dim, model=self.model_name, model_key=self.model_key, benchmark=benchmark)
        sweep["timings"] = {**self.timings, "total_s": time.perf_counter() - t0}
        if self.folder is not None and write_reports:
            self.folder.write_sweep(sweep)
        return sweep


def _at_dim(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """The vectors as a sweep's dimension sees them (None: as they are)."""
    return vectors if dim is None else renormalised_prefix(vectors, dim)


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
