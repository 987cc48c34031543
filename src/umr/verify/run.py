"""Embed the probes through umr's fast path and through the reference, and compare."""

from __future__ import annotations

import tempfile
from pathlib import Path
from ..core.devices import resolve_dtype
from ..models.base import Embedder
from .probes import Probe, probe_set
from .references import Reference, reference_for
from .report import ProbeResult, Tolerance, VerifyReport


def compare(model: Embedder, reference: Reference, probes: list[Probe], tolerance: Tolerance) -> list[ProbeResult]:
    """umr embeds all probes the way it embeds any input (cost-sorted batches, prefetching, the
    packed decoder); the reference embeds them one by one. A probe either side cannot embed is
    that probe's error; the others are still compared."""
    embedded = model.embed([probe.item for probe in probes], on_error="skip")
    ours = dict(zip(embedded.indices.tolist(), embedded.vectors))
    errors = {error.index: error.reason for error in embedded.errors}
    results = []
    for i, probe in enumerate(probes):
        if i in errors:
            results.append(ProbeResult(probe.item.id, probe.kind, error=f"umr: {errors[i]}"))
            continue
        try:
            theirs = reference.embed(probe.item)
        except Exception as exc:  # noqa: BLE001 - the reference failing on one probe is that probe's finding
            results.append(ProbeResult(probe.item.id, probe.kind,
                                       error=f"reference: {type(exc).__name__}: {str(exc).splitlines()[0]}"))
            continue
        results.append(ProbeResult.compare(probe.item.id, probe.kind, ours[i], theirs, tolerance))
    return results


def verify(embedder: Embedder, *, device: str = "cpu", workdir: str | Path | None = None,
           reference: Reference | None = None) -> VerifyReport:
    """Compare ``embedder`` (as loaded by :func:`~umr.models.load_model`, with the settings under
    test) with ``reference`` (a vLLM server's, say; default: its family's reference at the
    authors' default settings, in the same dtype and on the same device) on the probe set."""
    if embedder.identity is None or not embedder.identity.folder:
        raise ValueError(f"{embedder.name}: umr verify needs a model loaded from a folder (load_model)")
    settings = embedder.vector_options()
    dtype = str(settings.get("dtype", "float32"))
    identity = embedder.identity
    reference = reference or reference_for(identity.family, Path(identity.folder), device=device,
                                           dtype=resolve_dtype(dtype))
    tolerance = Tolerance.for_run(dtype, device)
    with tempfile.TemporaryDirectory(prefix="umr-verify-") as scratch:
        probes = probe_set(Path(workdir or scratch), sees_images=embedder.sees_images)
        results = compare(embedder, reference, probes, tolerance)
    return VerifyReport(model=identity.name, family=identity.family, device=device, dtype=dtype,
                        umr_options=settings, reference=reference.description, tolerance=tolerance,
                        probes=results)
