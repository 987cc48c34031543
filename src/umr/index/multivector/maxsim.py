"""Exact MaxSim, where the index (and ``umr eval``) call it: the kernel itself lives in
:mod:`umr.core.multivector.maxsim`, so that a :class:`~umr.models.multivector.MultiVectorEmbedder`
scores with the very same code (models may not import the index)."""

from ...core.multivector.maxsim import SCORE_ELEMENTS, maxsim, maxsim_topk, rerank

__all__ = ["SCORE_ELEMENTS", "maxsim", "maxsim_topk", "rerank"]
