"""Embed the probes through umr's fast path and through the reference, and compare."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..core.devices import check_device, resolve_dtype
from ..models.base import Embedder
from ..models.multivector import MultiVectorEmbedder, maxsim
from ..models.registry import quiet_transformers
from .probes import Probe, probe_set
from .references import Reference, reference_for, reference_from_file
from .report import ProbeResult, Tolerance, VerifyReport

#: the row MaxSim scores are reported in, for late-interaction models
MAXSIM_KIND = "MaxSim scores (per query token)"


def compare(model: Embedder | MultiVectorEmbedder, reference: Reference, probes: list[Probe],
            tolerance: Tolerance) -> list[ProbeResult]:
    """umr embeds all probes the way it embeds any input (cost-sorted batches, prefetching, the
    packed decoder); the reference embeds them one by one. A probe either side cannot embed is
    that probe's error; the others are still compared. For a late-interaction model each
    query's MaxSim scores against every document probe are compared too (divided by the query's
    token count, so that the tolerance of one cosine applies)."""
    embedded = model.embed([probe.item for probe in probes], on_error="skip")
    ours = dict(zip(embedded.indices.tolist(), embedded.vectors))
    errors = {error.index: error.reason for error in embedded.errors}
    results, theirs = [], {}
    for i, probe in enumerate(probes):
        if i in errors:
            results.append(ProbeResult(probe.item.id, probe.kind, error=f"umr: {errors[i]}"))
            continue
        try:
            theirs[i] = reference.embed(probe.item)
        except Exception as exc:  # noqa: BLE001 - the reference failing on one probe is that probe's finding
            results.append(ProbeResult(probe.item.id, probe.kind,
                                       error=f"reference: {type(exc).__name__}: {str(exc).splitlines()[0]}"))
            continue
        results.append(ProbeResult.compare(probe.item.id, probe.kind, ours[i], theirs[i], tolerance))
    if isinstance(model, MultiVectorEmbedder):
        results += _maxsim_results(probes, ours, theirs, tolerance)
    return results


def _maxsim_results(probes: list[Probe], ours: dict, theirs: dict, tolerance: Tolerance) -> list[ProbeResult]:
    """Per query probe: its scores against every document probe both sides embedded (token counts
    may differ: MaxSim compares what retrieval would rank)."""
    both = [i for i in theirs if np.shape(ours[i])[-1] == np.shape(theirs[i])[-1]]
    queries = [i for i in both if probes[i].item.is_query]
    documents = [i for i in both if not probes[i].item.is_query]
    if not queries or not documents:
        return []
    mine = maxsim([ours[i] for i in queries], [ours[j] for j in documents])
    reference = maxsim([theirs[i] for i in queries], [theirs[j] for j in documents])
    tokens = np.array([len(ours[i]) for i in queries], dtype=np.float32)[:, None]
    return [ProbeResult.compare(f"maxsim:{probes[i].item.id}", MAXSIM_KIND, row, other, tolerance)
            for i, row, other in zip(queries, mine / tokens, reference / tokens)]


def verify(embedder: Embedder | MultiVectorEmbedder, *, device: str = "cpu",
           reference: str | Path | Reference = "auto",
           workdir: str | Path | None = None) -> VerifyReport:
    """Compare ``embedder`` (as loaded by :func:`~umr.models.load_model`, with the settings under
    test) with its family's reference at the authors' default settings, in the same dtype, on
    the probe set.

    ``device``: where the reference runs; give the device the model was loaded on (the default,
    ``cpu``, is ``load_model``'s and the command line's). ``reference``: ``"auto"`` (the family's
    best reference this machine can run, see :func:`~umr.verify.reference_for`), a Python file
    with ``load(folder, *, device, dtype)`` (see :func:`~umr.verify.reference_from_file`), or a
    :class:`~umr.verify.Reference` already built (a vLLM server's, say).
    """
    if embedder.identity is None or not embedder.identity.folder:
        raise ValueError(f"{embedder.name}: umr verify needs a model loaded from a folder (load_model)")
    check_device(device)
    settings = embedder.vector_options()
    dtype = str(settings.get("dtype", "float32"))
    identity = embedder.identity
    folder = Path(identity.folder)
    with quiet_transformers():  # its load reports (a reference reads what it needs of a checkpoint)
        if isinstance(reference, Reference):
            ref = reference
        elif str(reference) == "auto":
            ref = reference_for(identity.family, folder, device=device, dtype=resolve_dtype(dtype),
                                options=identity.load_options)
        else:
            ref = reference_from_file(reference, folder, device=device, dtype=resolve_dtype(dtype))
    tolerance = Tolerance.for_run(dtype, device)
    with tempfile.TemporaryDirectory(prefix="umr-verify-") as scratch:
        probes = probe_set(Path(workdir or scratch), sees_images=embedder.sees_images, sees_video=embedder.sees_video,
                           late_interaction=embedder.multi_vector)
        results = compare(embedder, ref, probes, tolerance)
    return VerifyReport(model=identity.name, family=identity.family, device=device, dtype=dtype,
                        umr_options=settings, reference=ref.description, tolerance=tolerance,
                        probes=results)
