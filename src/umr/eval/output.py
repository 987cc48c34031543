"""An evaluation's output folder: it belongs to one model, holds each finished task (reused by
the next run when its signature matches), the TREC runs and the scores and reports.

Layout: ``model.json`` (the owner), ``runs/<pool>/<task>.trec`` (TREC run),
``runs/<pool>/<task>.uniir.trec`` (UniIR's 7-column variant with the task id),
``runs/<pool>/<task>.rerank.trec`` (the reranked run), ``tasks/<pool>/<task>.json`` (one finished
task), ``scores.json``, ``results.md`` and ``report.html``; a Matryoshka sweep writes each
dimension's under ``dim-N/`` and the sweep in ``dims.json`` / ``dims.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..core.atomic import write_text_atomic
from ..core.results import TaskResult
from ..data.tasks import RetrievalTask
from .report import sweep_report, write_reports
from .scoring import Run
from .trec import write_run


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


class OutputFolder:
    """The output folder ``root`` of the model ``model_name`` (its cache key ``key``), claimed
    with :func:`claim_output`; ``run_name`` names its TREC runs."""

    def __init__(self, root: Path, *, model_name: str, key: str, run_name: str):
        claim_output(root, model_name, key)
        self.root, self.run_name = root, run_name

    def view(self, dim: int | None) -> Path:
        """Where a dimension's runs, tasks and reports go (the folder itself without a sweep)."""
        return self.root if dim is None else self.root / f"dim-{dim}"

    def task_file(self, task: RetrievalTask, dim: int | None) -> Path:
        return self.view(dim) / "tasks" / task.pool / f"{task.name}.json"

    def finished(self, task: RetrievalTask, dim: int | None, signature: str) -> TaskResult | None:
        """The task's written result if it was computed from the same inputs (``signature``)."""
        done = self.task_file(task, dim)
        if not done.is_file():
            return None
        previous = json.loads(done.read_text(encoding="utf-8"))
        return TaskResult.from_json(previous) if previous.get("signature") == signature else None

    def write_task(self, task: RetrievalTask, result: TaskResult, run: Run, reranked: Run | None) -> None:
        """The task's TREC runs (the retriever's, UniIR's variant, the reranked one) and its result."""
        runs = self.view(result.dim) / "runs" / task.pool
        run_name = self.run_name if result.dim is None else f"{self.run_name}_dim{result.dim}"
        write_run(runs / f"{task.name}.trec", run, run_name=run_name)
        write_run(runs / f"{task.name}.uniir.trec", run, run_name=run_name,
                  task_tags={q.id: task.run_tag for q in task.queries})
        if reranked is not None:
            write_run(runs / f"{task.name}.rerank.trec", reranked, run_name=f"{run_name}_rerank")
        done = self.task_file(task, result.dim)
        done.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(done, json.dumps(result.to_json(), indent=1))

    def write_scores(self, scores: dict[str, Any], dim: int | None) -> None:
        """``results.md``, ``report.html`` and ``scores.json`` (timed as ``timings["report_s"]``)."""
        t0 = time.perf_counter()
        write_reports(scores, self.view(dim))
        scores["timings"]["report_s"] = time.perf_counter() - t0
        (self.view(dim) / "scores.json").write_text(json.dumps(scores, indent=1), encoding="utf-8")

    def write_sweep(self, sweep: dict[str, Any]) -> None:
        (self.root / "dims.md").write_text(sweep_report(sweep), encoding="utf-8")
        (self.root / "dims.json").write_text(json.dumps(sweep, indent=1), encoding="utf-8")
