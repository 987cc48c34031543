"""How close is close enough, and what ``umr verify`` reports per probe and per kind."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """The verdict's bounds. In float32 on a CPU both implementations do the same arithmetic in
    another order (differences ~1e-6, the bound the parity tests use); on a GPU kernels choose
    their own reduction order (and TF32); in bfloat16/float16 an element carries 2-3 significant
    digits, so only the direction (cosine) is judged there."""

    min_cosine: float
    max_abs: float | None
    why: str

    @classmethod
    def for_run(cls, dtype: str, device: str) -> "Tolerance":
        if dtype in ("bfloat16", "float16"):
            return cls(0.99, None, f"{dtype}: 2-3 significant digits per element; cosine judged only")
        if device.startswith("cpu"):
            return cls(0.99999, 1e-5, "float32 on a CPU: the same arithmetic in another order")
        return cls(0.9999, 1e-3, "float32 on an accelerator: kernels reduce in their own order (TF32 allowed)")

    def holds(self, cosine: float, max_abs: float) -> bool:
        return cosine >= self.min_cosine and (self.max_abs is None or max_abs <= self.max_abs)

    def __str__(self) -> str:
        bound = f"cosine >= {self.min_cosine}" + (f" and max|Δ| <= {self.max_abs:g}" if self.max_abs else "")
        return f"{bound} ({self.why})"


@dataclass
class ProbeResult:
    """One probe: how far umr's vector is from the reference's, or why one side had none."""

    id: str
    kind: str
    cosine: float | None = None
    max_abs: float | None = None
    ok: bool = False
    error: str | None = None

    @classmethod
    def compare(cls, id: str, kind: str, ours: np.ndarray, theirs: np.ndarray, tolerance: Tolerance) -> "ProbeResult":
        """One vector against the reference's; or token vectors ``(n_tokens, dim)``: the same
        tokens, judged by the worst token's cosine and the largest element difference."""
        ours, theirs = np.atleast_2d(np.asarray(ours, np.float32)), np.atleast_2d(np.asarray(theirs, np.float32))
        if ours.shape != theirs.shape:
            what = "dimension" if ours.shape[0] == 1 else "tokens x dimension"
            return cls(id, kind, error=f"{what} {_shape(ours)} vs the reference's {_shape(theirs)}")
        norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
        cosine = float(((ours * theirs).sum(axis=1) / np.where(norms > 0, norms, 1.0)).min())
        max_abs = float(np.abs(ours - theirs).max())
        return cls(id, kind, cosine, max_abs, tolerance.holds(cosine, max_abs))


def _shape(array: np.ndarray) -> tuple[int, ...]:
    return (array.shape[1],) if array.shape[0] == 1 else tuple(array.shape)


def aligned(cells: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as text columns, each as wide as its widest cell (the reports' tables)."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]


@dataclass
class VerifyReport:
    """Everything ``umr verify`` found, printable as a table and writable as JSON."""

    model: str
    family: str
    device: str
    dtype: str
    umr_options: dict[str, Any]
    reference: str
    tolerance: Tolerance
    probes: list[ProbeResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.probes) and all(probe.ok for probe in self.probes)

    @property
    def failed(self) -> list[ProbeResult]:
        return [probe for probe in self.probes if not probe.ok]

    def rows(self) -> list[dict[str, Any]]:
        """One row per probe kind: how many, the worst cosine and max|Δ|, the verdict."""
        kinds: dict[str, list[ProbeResult]] = {}
        for probe in self.probes:
            kinds.setdefault(probe.kind, []).append(probe)
        rows = []
        for kind, group in kinds.items():
            measured = [p for p in group if p.error is None]
            rows.append({
                "kind": kind, "probes": len(group),
                "worst_cosine": min((p.cosine for p in measured), default=None),
                "max_abs": max((p.max_abs for p in measured), default=None),
                "verdict": "ok" if all(p.ok for p in group) else
                           ("error" if any(p.error for p in group) else "DIFFERS"),
            })
        return rows

    def table(self) -> str:
        lines = [f"model     {self.model} ({self.family}) on {self.device}, {self.dtype}",
                 f"umr       {json.dumps(self.umr_options, sort_keys=True)}",
                 f"reference {self.reference}",
                 f"tolerance {self.tolerance}", ""]
        header = ("probe kind", "n", "worst cosine", "max |Δ|", "verdict")
        cells = [header] + [(row["kind"], str(row["probes"]),
                             "-" if row["worst_cosine"] is None else f"{row['worst_cosine']:.8f}",
                             "-" if row["max_abs"] is None else f"{row['max_abs']:.2e}", row["verdict"])
                            for row in self.rows()]
        lines += aligned(cells)
        for probe in self.failed:
            reason = probe.error or f"cosine {probe.cosine:.8f}, max|Δ| {probe.max_abs:.2e}"
            lines.append(f"differs: {probe.id} [{probe.kind}]: {reason}")
        lines.append("")
        lines.append(f"{'OK' if self.ok else 'FAILED'}: {len(self.probes) - len(self.failed)} of "
                     f"{len(self.probes)} probes within the tolerance")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["tolerance"] = {"min_cosine": self.tolerance.min_cosine, "max_abs": self.tolerance.max_abs,
                            "why": self.tolerance.why}
        out.update(ok=self.ok, kinds=self.rows())
        return out
