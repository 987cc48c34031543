"""Readable results: Markdown tables in the papers' layout, an HTML report with charts, compare.

* M-BEIR (UniIR / MM-Embed layout): one row per task — task number, category, dataset, the
  headline metric (R@5, or R@10 for Fashion200K/FashionIQ) — with one column per pool, then the
  average; plus the R@1/5/10 and R@10/20/50 tables and NDCG@10/MRR@10/MAP.
* UMRB (GME layout): one row per category grouped as single-, cross- and fused-modal, then every
  task with its headline metric.
* The modality-bias table: the share of top-k results whose modality is not the task's target.
* Failures: a task in which queries or candidates could not be embedded is marked ⚠ and listed
  with its counts and first reasons; a metric with no basis (nothing scored, no results) is
  ``n/a``, a task a pool does not have is ``–``.

The HTML report is one file: its charts are matplotlib PNGs embedded as base64.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from ..core.results import TaskResult
from ..data.tasks import CATEGORIES, UMRB_GROUPS
from .notes import dropped_note, percent

#: a task or category the pool does not have, as opposed to a value with no basis (``n/a``)
ABSENT = "–"
FAILED = "⚠"


def _cell(values: dict[str, Any] | None, key: str) -> str:
    """``values[key]`` as a percentage, or :data:`ABSENT` where there is no such task, mean or metric."""
    return ABSENT if values is None or key not in values else percent(values[key])


def metric_label(name: str) -> str:
    """A metric as the tables name it: ``hit@5`` -> ``R@5`` (UniIR's Recall@k), ``ndcg@5`` -> ``NDCG@5``."""
    if name.startswith("hit@"):
        return "R@" + name[4:]
    if name.startswith(("ndcg@", "mrr@", "map@")):
        return name.upper()
    return {"map": "MAP", "mrr": "MRR"}.get(name, name)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _by_task(scores: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str], TaskResult]]:
    """The pools and task names in order, and each (task, pool)'s result."""
    pools: list[str] = []
    names: list[str] = []
    table: dict[tuple[str, str], TaskResult] = {}
    for r in map(TaskResult.from_json, scores["tasks"]):
        if r.pool not in pools:
            pools.append(r.pool)
        if r.task not in names:
            names.append(r.task)
        table[(r.task, r.pool)] = r
    first = {n: table[next((n, p) for p in pools if (n, p) in table)] for n in names}
    # M-BEIR's tables list tasks by task number, then dataset
    if names and all(first[n].metadata.get("task_id") is not None for n in names):
        names.sort(key=lambda n: (first[n].metadata["task_id"], first[n].dataset.lower(), n))
    return pools, names, table


def markdown_report(scores: dict[str, Any]) -> str:
    pools, names, table = _by_task(scores)
    out = [f"# {scores['model']} on {scores['benchmark']}", "",
           f"Created {scores.get('created', '')}. Scores are percentages. R@k is UniIR's Recall@k "
           "(a hit if any positive is in the top k); NDCG@10, MRR@10, MAP and Recall@k (the share of "
           "relevant candidates found, as BEIR and MTEB report it) follow trec_eval.", ""]

    def first(name):
        return next(table[(name, p)] for p in pools if (name, p) in table)

    # headline table in the papers' layout; reranked scores beside the retriever's when there are any
    reranked = next((r.rerank for r in table.values() if r.rerank is not None), None)
    out += ["## Headline scores", ""]
    if reranked:
        out += [f"Reranked: each query's top {reranked.k} reordered by {reranked.model}.", ""]
    header = ["Task", "Category", "Dataset", "Metric"] + [p.capitalize() for p in pools] \
        + ([f"{p.capitalize()} reranked" for p in pools] if reranked else [])
    rows = []

    def score_cell(name, pool, reranked=False):
        r = table.get((name, pool))
        scores_ = r.rerank if reranked and r is not None else r
        return ABSENT if scores_ is None else percent(scores_.main_score)

    for name in names:
        r = first(name)
        task_no = r.metadata.get("task_id")
        label = f"{task_no}. {name}" if task_no is not None else name
        if any(table[(name, p)].failed for p in pools if (name, p) in table):
            label += f" {FAILED}"
        rows.append([label, r.category, r.dataset, metric_label(r.main_metric)]
                    + [score_cell(name, p) for p in pools]
                    + ([score_cell(name, p, reranked=True) for p in pools] if reranked else []))
    rows.append(["**Average**", "", "", ""] + [f"**{percent(scores['averages'][p]['main_score'])}**" for p in pools]
                + ([f"**{percent(scores['averages'][p].get('rerank_main_score'))}**" for p in pools] if reranked else []))
    out += [_table(header, rows), ""]

    # UMRB groups
    out += ["## By category (UMRB groups)", ""]
    header = ["Group", "Category", "Tasks"] + [f"{p.capitalize()} headline" for p in pools] + \
             [f"{p.capitalize()} NDCG@10" for p in pools]
    rows = []
    for group, cats in UMRB_GROUPS.items():
        for cat in cats:
            present = [p for p in pools if cat in scores["averages"][p]["by_category"]]
            if not present:
                continue
            n = scores["averages"][present[0]]["by_category"][cat]["n_tasks"]
            rows.append([group, cat, str(n)]
                        + [_cell(scores["averages"][p]["by_category"].get(cat), "main_score") for p in pools]
                        + [_cell(scores["averages"][p]["by_category"].get(cat), "ndcg@10") for p in pools])
        present = [p for p in pools if group in scores["averages"][p]["by_group"]]
        if present:
            rows.append([f"**{group}**", "", str(scores["averages"][present[0]]["by_group"][group]["n_tasks"])]
                        + [f"**{_cell(scores['averages'][p]['by_group'].get(group), 'main_score')}**" for p in pools]
                        + [f"**{_cell(scores['averages'][p]['by_group'].get(group), 'ndcg@10')}**" for p in pools])
    others = sorted({r.category for r in table.values()} - set(CATEGORIES))
    for cat in others:
        rows.append(["other", cat, ""] + [_cell(scores["averages"][p]["by_category"].get(cat), "main_score")
                                          for p in pools] + ["" for _ in pools])
    out += [_table(header, rows), ""]

    # recall tables and the rest, per pool
    for pool in pools:
        out += [f"## All metrics — {pool} pool", ""]
        # visual-document tasks (ViDoRe) headline NDCG@5: its column comes first where a task has it
        leading = ["ndcg@5"] if any("ndcg@5" in r.metrics for (_, p), r in table.items() if p == pool) else []
        header = ["Task"] + [metric_label(m) for m in leading] + ["R@1", "R@5", "R@10", "R@20", "R@50", "NDCG@10",
                                                               "MRR@10", "MAP", "Recall@10", "Recall@100",
                                                               "Queries scored"]
        rows = []
        for name in names:
            r = table.get((name, pool))
            if r is None:
                continue
            m, scored = r.metrics, r.n_scored_queries

            def cell(key, m=m):  # nothing scored: every metric is without basis
                return _cell(m, key) if m else "n/a"
            rows.append([name] + [cell(m) for m in leading] + [cell(f"hit@{k}") for k in (1, 5, 10, 20, 50)]
                        + [cell("ndcg@10"), cell("mrr@10"), cell("map"), cell("recall@10"), cell("recall@100"),
                           f"{scored} of {r.n_queries}" if scored != r.n_queries else str(scored)])
        out += [_table(header, rows), ""]

    out += ["## Modality bias", "",
            "Share of the top-k results whose modality differs from the task's target modality "
            "(MM-Embed's diagnostic; 0 = every result has the right modality).", ""]
    header = ["Task", "Target", "k"] + [p.capitalize() for p in pools]
    rows = []
    for name in names:
        r = first(name)
        rows.append([name, r.target_modality, str(r.modality_bias["k"])]
                    + [_cell(table[(name, p)].modality_bias, "bias") if (name, p) in table else ABSENT for p in pools])
    out += [_table(header, rows), ""]

    flagged = [r for r in map(TaskResult.from_json, scores["tasks"]) if r.failed or dropped_note(r)]
    if flagged:
        out += ["## Failures and dropped queries", "",
                f"{FAILED} marks a task in which items could not be embedded: its failed candidates cannot "
                "be found, and its failed queries count as 0 (M-BEIR, as UniIR) or are left out of the "
                "mean (BEIR-style tasks, as BEIR). Queries are also dropped from BEIR-style means when "
                "the qrels judge a query that the queries file does not hold.", ""]
        rows = [[f"{r.task} {FAILED}" if r.failed else r.task, r.pool,
                 f"{r.failures.queries} of {r.n_queries}" if r.failed else "0",
                 f"{r.failures.candidates} of {r.n_candidates}" if r.failed else "0",
                 dropped_note(r) or "–",
                 "; ".join(f"{f.id}: {f.error}" for f in r.failures.first).replace("|", "/") or "–"]
                for r in flagged]
        out += [_table(["Task", "Pool", "Failed queries", "Failed candidates", "Scored", "First reasons"], rows), ""]
    return "\n".join(out)


# -- charts ------------------------------------------------------------------------------------

def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def charts(scores: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs: headline score per task, modality bias per task, score per category."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    pools, names, table = _by_task(scores)
    images: dict[str, str] = {}
    width = 0.8 / max(len(pools), 1)
    height = max(2.5, 0.35 * len(names) * max(len(pools), 1) + 1)

    for key, title, value in (
        ("headline", "Headline score per task (%)", lambda r: 100 * (r.main_score or 0)),
        ("bias", "Modality bias: top-k results of the wrong modality (%)",
         lambda r: 100 * (r.modality_bias["bias"] or 0)),
    ):
        fig, ax = plt.subplots(figsize=(8, height))
        for j, pool in enumerate(pools):
            ys = [i + j * width for i in range(len(names))]
            xs = [value(table[(n, pool)]) if (n, pool) in table else 0 for n in names]
            bars = ax.barh(ys, xs, height=width, label=pool)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_yticks([i + width * (len(pools) - 1) / 2 for i in range(len(names))])
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 105)
        ax.set_title(title, fontsize=10)
        if len(pools) > 1:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        images[key] = _png(fig)

    cats = [c for c in CATEGORIES if any(c in scores["averages"][p]["by_category"] for p in pools)]
    cats += sorted({c for p in pools for c in scores["averages"][p]["by_category"]} - set(cats))
    if cats:
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(cats) + 2), 3.2))
        for j, pool in enumerate(pools):
            xs = [i + j * width for i in range(len(cats))]
            ys = [100 * (scores["averages"][pool]["by_category"].get(c, {}).get("main_score") or 0) for c in cats]
            bars = ax.bar(xs, ys, width=width, label=pool)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([i + width * (len(pools) - 1) / 2 for i in range(len(cats))])
        ax.set_xticklabels(cats)
        ax.set_ylim(0, 105)
        ax.set_title("Mean headline score per category (%)", fontsize=10)
        if len(pools) > 1:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        images["categories"] = _png(fig)
    return images


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}
.note{color:#555;font-size:13px}"""


def _md_table_to_html(block: str) -> str:
    lines = [l for l in block.strip().splitlines() if l.startswith("|")]
    if len(lines) < 2:
        return ""
    cells = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
    head, body = cells[0], cells[2:]

    def cell(text, tag):
        bold = text.startswith("**") and text.endswith("**") and len(text) > 4
        text = html.escape(text[2:-2] if bold else text)
        return f"<{tag}>{'<b>' + text + '</b>' if bold else text}</{tag}>"

    rows = ["<tr>" + "".join(cell(c, "th") for c in head) + "</tr>"]
    rows += ["<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in body]
    return "<table>" + "".join(rows) + "</table>"


def html_report(scores: dict[str, Any]) -> str:
    """One self-contained HTML page: the Markdown tables plus the charts."""
    md = markdown_report(scores)
    try:
        images = charts(scores)
    except ImportError:  # matplotlib is the `eval` extra: without it, the tables alone
        images = {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(scores['model'])} — "
             f"{html.escape(scores['benchmark'])}</title><style>{_CSS}</style></head><body>"]
    sections = md.split("\n## ")
    head = sections[0].splitlines()
    parts.append(f"<h1>{html.escape(head[0].lstrip('# '))}</h1>")
    parts.append(f"<p class='note'>{html.escape(' '.join(l for l in head[1:] if l.strip()))}</p>")
    chart_after = {"Headline scores": ["headline"], "By category (UMRB groups)": ["categories"],
                   "Modality bias": ["bias"]}
    for section in sections[1:]:
        title, _, body = section.partition("\n")
        parts.append(f"<h2>{html.escape(title)}</h2>")
        text = [l for l in body.splitlines() if l.strip() and not l.startswith("|")]
        if text:
            parts.append(f"<p class='note'>{html.escape(' '.join(text))}</p>")
        parts.append(_md_table_to_html(body))
        for key in chart_after.get(title, []):
            if key in images:
                parts.append(f"<img alt='{key} chart' src='data:image/png;base64,{images[key]}'>")
    timings = scores.get("timings")
    if timings:
        parts.append("<p class='note'>Time: " + html.escape(", ".join(
            f"{k} {v:.1f}s" for k, v in timings.items())) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(scores: dict[str, Any], output: str | Path) -> None:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.md").write_text(markdown_report(scores), encoding="utf-8")
    (output / "report.html").write_text(html_report(scores), encoding="utf-8")


def sweep_report(sweep: dict[str, Any]) -> str:
    """A dimension sweep as Markdown: one row per task (its headline metric), one column per
    dimension, then each pool's mean headline, NDCG@10 and modality bias at every dimension."""
    dims = [str(d) for d in sweep["dims"]]
    header = ["Task", "Pool", "Metric"] + [f"dim {d}" for d in dims]
    rows = [[r["task"] + (f" {FAILED}" if r["failed"] else ""), r["pool"], metric_label(r["main_metric"])]
            + [percent(r["main_score"].get(d)) for d in dims] for r in sweep["tasks"]]
    for pool, avg in sweep["averages"].items():
        for key, label in (("main_score", "headline"), ("ndcg@10", "NDCG@10"), ("modality_bias", "modality bias")):
            rows.append([f"**Mean** ({label})", pool, ""] + [percent(avg[key].get(d)) for d in dims])
    folders = ", ".join(f"`{sweep['folders'][d]}/`" for d in dims)
    return "\n\n".join([f"# {sweep['model']} on {sweep['benchmark']}: Matryoshka dimensions",
                         "Every item embedded once at the model's full dimension; each column scores the "
                         "first N dimensions of those vectors, renormalised.", _table(header, rows),
                         f"Each dimension's runs and full reports: {folders}."]) + "\n"


# -- compare -----------------------------------------------------------------------------------

def load_scores(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "scores.json"
    if not path.is_file():
        raise FileNotFoundError(f"no scores.json at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def compare(a: dict[str, Any], b: dict[str, Any], *, metrics: tuple[str, ...] = ("main", "ndcg@10"),
            names: tuple[str, str] | None = None) -> str:
    """A Markdown table of per-task deltas (B − A) on the headline metric and NDCG@10.

    Every task of either side appears once (A's order, then B's new ones), each metric once per
    task (NDCG@10 is not repeated when it is the headline); a task found on one side only is
    listed as such and left out of the mean Δ. ``names`` labels the sides (e.g. their folders);
    each label is followed by the side's model.
    """
    ta = {(r.task, r.pool): r for r in map(TaskResult.from_json, a["tasks"])}
    tb = {(r.task, r.pool): r for r in map(TaskResult.from_json, b["tasks"])}
    keys = list(ta) + [k for k in tb if k not in ta]
    label_a, label_b = (f"{names[0]} ({a['model']})", f"{names[1]} ({b['model']})") if names else \
        (a["model"], b["model"])
    header = ["Task", "Pool", "Metric", f"A: {label_a}", f"B: {label_b}", "Δ (B−A)"]
    rows = []
    sums: dict[str, list[float]] = {}

    def values(r: TaskResult | None) -> dict[str, Any] | None:
        """A side's scores by the names ``metrics`` uses ("main": the headline); None if it lacks the task."""
        return None if r is None else {**r.metrics, "main": r.main_score}

    for key in keys:
        ra, rb = ta.get(key), tb.get(key)
        headline = (ra or rb).main_metric
        shown: list[str] = []
        for metric in metrics:
            name = headline if metric == "main" else metric
            sa, sb = values(ra), values(rb)
            va, vb = (None if s is None else s.get(metric) for s in (sa, sb))
            delta = vb - va if all(isinstance(v, (int, float)) for v in (va, vb)) else None
            if delta is not None:
                sums.setdefault(metric, []).append(delta)
            if name in shown:  # the headline is NDCG@10: one row, not two
                continue
            shown.append(name)
            note = "only in A" if rb is None else "only in B" if ra is None else "–"
            rows.append([key[0], key[1], metric_label(name), _cell(sa, metric), _cell(sb, metric),
                         note if delta is None else f"{100 * delta:+.2f}"])
    for metric, deltas in sums.items():
        rows.append(["**Mean Δ**", "", "headline" if metric == "main" else metric_label(metric), "", "",
                     f"**{100 * sum(deltas) / len(deltas):+.2f}**"])
    out = [_table(header, rows)]
    for side, mine, other in (("A", ta, tb), ("B", tb, ta)):
        alone = [f"{task} [{pool}]" for task, pool in mine if (task, pool) not in other]
        if alone:
            out.append(f"Only in {side}: {', '.join(alone)}")
    return "\n\n".join(out)
