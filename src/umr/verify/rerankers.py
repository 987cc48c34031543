"""``umr verify --reranker``: score built-in (query, document) probe pairs through umr's reranker
fast path (cost-sorted, padded batches) and through the family's reference (one pair at a time),
and compare the scores.

A score is one number, not a vector: there is no cosine to take, so the verdict is the largest
score difference against a bound that depends on dtype and device (:class:`ScoreTolerance`), and
the report adds what a reranker is for — whether the reference orders each query's documents the
same way (rank agreement). That is why pairs have their own result and report types here rather
than optional fields on the embedder's :class:`~umr.verify.report.ProbeResult`.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from ..core.devices import resolve_dtype
from ..core.items import Item
from ..rerank.base import Pair, Reranker
from .probes import long_text, probe_set
from .references.rerank_base import RerankReference
from .references.rerank_cross_encoder import CrossEncoderReference
from .references.rerank_generative import GenerativeRerankerReference
from .references.rerank_qwen3vl import Qwen3VLRerankerReference
from .report import aligned

#: reranker family -> its reference (built from the checkpoint folder, a device and a dtype)
RERANK_REFERENCES: dict[str, type[RerankReference]] = {
    "qwen3-vl-reranker": Qwen3VLRerankerReference,
    "zero-shot": GenerativeRerankerReference,
    "cross-encoder": CrossEncoderReference,
}

#: words in the long document for a reference that cuts nothing (every word is a token or more)
LONG_DOCUMENT_WORDS = 2500


def long_document_words(window: int | None) -> int:
    """Enough words to run past a window of ``window`` tokens, whatever else the pair holds."""
    return LONG_DOCUMENT_WORDS if window is None else window + window // 5 + 50


class NoRerankReference(ValueError):
    """The reranker has no reference umr can run (built by hand, or an unknown family)."""


def rerank_reference_for(reranker: Reranker, *, device: str) -> RerankReference:
    """The reference of the reranker's family, loaded from its folder in its dtype, on ``device``."""
    if reranker.family not in RERANK_REFERENCES or reranker.folder is None:
        raise NoRerankReference(f"{reranker.name}: no reference for a reranker of family {reranker.family!r} "
                                f"(umr verify covers {', '.join(sorted(RERANK_REFERENCES))} loaded by load_reranker)")
    dtype = resolve_dtype(str(reranker.options().get("dtype", "float32")))
    return RERANK_REFERENCES[reranker.family](Path(reranker.folder), device=device, dtype=dtype)


@dataclass(frozen=True)
class PairProbe:
    """One (query, document) pair and the kind it stands for (its row in the report)."""

    kind: str
    query: Item
    document: Item

    @property
    def id(self) -> str:
        return f"{self.query.id} -> {self.document.id}"


def pair_probes(workdir: Path, *, sees_images: bool, window: int | None = None, seed: int = 0) -> list[PairProbe]:
    """The probe pairs: text and image queries (with and without an instruction) against short
    texts and one past the reference's ``window``, images of every 8-bit PIL mode and odd sizes,
    fused items and a PDF page, built from :func:`~umr.verify.probes.probe_set`'s items; image
    pairs only for a reranker that reads pixels."""
    singles = probe_set(workdir, sees_images=sees_images, seed=seed)
    items = {probe.item.id: probe.item for probe in singles}
    query, instructed = items["query-plain"], items["query-instructed"]
    answer = Item.candidate(text="Bicycles can be parked in the courtyard behind the library.", id="text-answer")
    long = Item.candidate(text=long_text(random.Random(seed), long_document_words(window)), id="text-past-window")
    probes = [PairProbe("text -> text", query, document) for document in (items["text-short"], answer)]
    probes += [PairProbe("text + instruction -> text", instructed, document)
               for document in (items["text-short"], answer)]
    probes += [PairProbe("text -> long text, past the window", q, long) for q in (query, instructed)]
    if not sees_images:
        return probes
    images = [probe for probe in singles if probe.kind.startswith("image ") and not probe.item.is_query]
    probes += [PairProbe(f"text -> {image.kind}", query, image.item) for image in images]
    image_query, fused_query = items["image-query"], items["fused-query"]
    fused, page = items["fused-candidate"], items["page.pdf#page=1"]
    probes += [PairProbe("image + instruction -> text / image", image_query, document)
               for document in (items["text-short"], images[1].item)]
    probes += [PairProbe("fused + instruction -> fused / text / image", fused_query, document)
               for document in (fused, answer, images[2].item)]
    probes += [PairProbe("text -> fused", query, fused), PairProbe("text -> PDF page", query, page)]
    return probes


@dataclass(frozen=True)
class ScoreTolerance:
    """The verdict's bound on |umr's score − the reference's|. In float32 on a CPU both do the same
    arithmetic in another order (~1e-6, the parity tests' bound 1e-5); on an accelerator kernels
    reduce in their own order (TF32); in bfloat16/float16 the yes/no logits carry 2-3 significant
    digits, which moves a probability near 0.5 by up to a few hundredths."""

    max_abs: float
    why: str

    @classmethod
    def for_run(cls, dtype: str, device: str) -> "ScoreTolerance":
        if dtype in ("bfloat16", "float16"):
            return cls(3e-2, f"{dtype}: logits of 2-3 significant digits")
        if device.startswith("cpu"):
            return cls(1e-5, "float32 on a CPU: the same arithmetic in another order")
        return cls(2e-3, "float32 on an accelerator: kernels reduce in their own order (TF32 allowed)")

    def holds(self, delta: float) -> bool:
        return delta <= self.max_abs

    def __str__(self) -> str:
        return f"|Δ score| <= {self.max_abs:g} ({self.why})"


@dataclass
class PairResult:
    """One pair: both scores, or why one side had none."""

    id: str
    kind: str
    query: str
    ours: float | None = None
    theirs: float | None = None
    ok: bool = False
    error: str | None = None

    @property
    def delta(self) -> float | None:
        return None if self.error else abs(self.ours - self.theirs)


def rank_agreement(results: list[PairResult]) -> float | None:
    """The share of document pairs of one query that umr and the reference order alike (ties
    count as alike when both tie); None when no query has two scored documents here."""
    by_query: dict[str, list[PairResult]] = {}
    for result in results:
        if result.error is None:
            by_query.setdefault(result.query, []).append(result)
    alike = total = 0
    for group in by_query.values():
        for a, b in combinations(group, 2):
            total += 1
            alike += (a.ours > b.ours) - (a.ours < b.ours) == (a.theirs > b.theirs) - (a.theirs < b.theirs)
    return alike / total if total else None


@dataclass
class RerankReport:
    """Everything ``umr verify --reranker`` found, printable as a table and writable as JSON."""

    reranker: str
    family: str
    device: str
    dtype: str
    umr_options: dict[str, Any]
    reference: str
    tolerance: ScoreTolerance
    probes: list[PairResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.probes) and all(probe.ok for probe in self.probes)

    @property
    def failed(self) -> list[PairResult]:
        return [probe for probe in self.probes if not probe.ok]

    def rows(self) -> list[dict[str, Any]]:
        """One row per probe kind: how many, the largest |Δ|, the rank agreement, the verdict."""
        kinds: dict[str, list[PairResult]] = {}
        for probe in self.probes:
            kinds.setdefault(probe.kind, []).append(probe)
        return [{"kind": kind, "probes": len(group),
                 "max_abs": max((p.delta for p in group if p.error is None), default=None),
                 "rank_agreement": rank_agreement(group),
                 "verdict": "ok" if all(p.ok for p in group) else
                            ("error" if any(p.error for p in group) else "DIFFERS")}
                for kind, group in kinds.items()]

    def table(self) -> str:
        lines = [f"reranker  {self.reranker} ({self.family}) on {self.device}, {self.dtype}",
                 f"umr       {json.dumps(self.umr_options, sort_keys=True, default=str)}",
                 f"reference {self.reference}",
                 f"tolerance {self.tolerance}", ""]
        cells = [("probe kind", "n", "max |Δ score|", "rank agreement", "verdict")]
        cells += [(row["kind"], str(row["probes"]), "-" if row["max_abs"] is None else f"{row['max_abs']:.2e}",
                   "-" if row["rank_agreement"] is None else f"{row['rank_agreement']:.0%}", row["verdict"])
                  for row in self.rows()]
        lines += aligned(cells)
        overall = rank_agreement(self.probes)
        if overall is not None:
            lines.append(f"rank agreement over all pairs of one query: {overall:.1%}")
        for probe in self.failed:
            reason = probe.error or f"umr {probe.ours:.6f}, reference {probe.theirs:.6f}, |Δ| {probe.delta:.2e}"
            lines.append(f"differs: {probe.id} [{probe.kind}]: {reason}")
        lines.append("")
        lines.append(f"{'OK' if self.ok else 'FAILED'}: {len(self.probes) - len(self.failed)} of "
                     f"{len(self.probes)} pairs within the tolerance")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ok=self.ok, kinds=self.rows(), rank_agreement=rank_agreement(self.probes))
        return out


def compare_scores(reranker: Reranker, reference: RerankReference, probes: list[PairProbe],
                   tolerance: ScoreTolerance) -> list[PairResult]:
    """umr scores every pair the way it scores any (cost-sorted, padded batches); the reference
    scores them one by one. A pair either side cannot score is that pair's error."""
    scored = reranker.score_pairs([Pair(p.query, p.document) for p in probes], on_error="skip")
    ours = dict(zip(scored.indices.tolist(), scored.scores.tolist()))
    errors = {error.index: error.reason for error in scored.errors}
    results = []
    for i, probe in enumerate(probes):
        result = PairResult(probe.id, probe.kind, str(probe.query.id))
        if i in errors:
            result.error = f"umr: {errors[i]}"
        else:
            try:
                result.theirs = float(reference.score(probe.query, probe.document))
            except Exception as exc:  # noqa: BLE001 - the reference failing on one pair is that pair's finding
                result.error = f"reference: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            else:
                result.ours = float(ours[i])
                result.ok = tolerance.holds(result.delta)
        results.append(result)
    return results


def verify_reranker(reranker: Reranker, *, device: str = "cpu", reference: RerankReference | None = None,
                    workdir: str | Path | None = None) -> RerankReport:
    """Compare ``reranker`` (as loaded by :func:`~umr.rerank.load_reranker`, with the settings under
    test) with ``reference`` (default: its family's reference at the authors' default settings,
    in the same dtype on the same device) on the probe pairs."""
    options = reranker.options()
    dtype = str(options.get("dtype", "float32"))
    reference = reference or rerank_reference_for(reranker, device=device)
    tolerance = ScoreTolerance.for_run(dtype, device)
    with tempfile.TemporaryDirectory(prefix="umr-verify-") as scratch, torch.inference_mode():
        probes = pair_probes(Path(workdir or scratch), sees_images=reranker.sees_images, window=reference.window)
        results = compare_scores(reranker, reference, probes, tolerance)
    return RerankReport(reranker=reranker.name, family=str(reranker.family), device=device, dtype=dtype,
                        umr_options=options, reference=reference.description, tolerance=tolerance, probes=results)
