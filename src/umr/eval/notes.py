"""What a finished task's result says in words: the queries it dropped and the items that failed.

Read by the evaluator's log line, the reports and ``umr eval``'s summary alike.
"""

from __future__ import annotations

from typing import Any


def dropped_note(result: dict[str, Any]) -> str:
    """``48 of 51 judged queries scored (1 absent from the queries, 2 failed)``, or '' if none dropped."""
    dropped = result.get("dropped_queries") or {}
    parts = [f"{n} {why}" for why, n in (("absent from the queries", dropped.get("absent", 0)),
                                         ("failed", dropped.get("failed", 0)),
                                         ("without judgements", dropped.get("unjudged", 0))) if n]
    if not parts:
        return ""
    return f"{result.get('n_scored_queries', 0)} queries scored, dropped: " + ", ".join(parts)


def failure_note(result: dict[str, Any]) -> str:
    """``2 of 50 queries, 54 of 195 candidates failed (q7: reason; ...)``, or '' if nothing failed."""
    failures = result.get("failures") or {}
    counts = [f"{failures[role]} of {result[total]} {role}" for role, total in
              (("queries", "n_queries"), ("candidates", "n_candidates")) if failures.get(role)]
    if not counts:
        return ""
    first = "; ".join(f"{r['id']}: {r['error']}" for r in failures.get("first", []))
    return " and ".join(counts) + " failed" + (f" (first: {first})" if first else "")
