"""Late-interaction (multi-vector) search, independent of any store layout.

* :class:`TokenVectors`: documents' token vectors concatenated, with offsets, in one of the
  :mod:`~umr.core.multivector.encoding` storage encodings (float16 by default, int8, sign bits).
* :func:`maxsim`, :func:`maxsim_topk`, :func:`rerank`: exact MaxSim, scanned in bounded blocks
  (:mod:`umr.core.multivector`, the one kernel the models' ``score`` uses too).
* First stages that pick candidates for an exact rerank: :class:`MuveraStage` (fixed-dimensional
  encodings, Dhulipala et al. 2024) and :class:`PooledStage` (pooled vectors), both searched with
  FAISS; :class:`LateInteractionSearch` joins a first stage and the rerank.
* :func:`pool_tokens`: hierarchical token pooling at index time (colpali-engine's
  ``HierarchicalTokenPooler``).
"""

from ...core.multivector.encoding import (BinaryEncoding, Float16Encoding, Float32Encoding, Int8Encoding,
                                          TokenEncoding, encoding_from_state)
from ...core.multivector.tokens import TokenVectors, as_queries
from .maxsim import maxsim, maxsim_topk, rerank

__all__ = ["BinaryEncoding", "Float16Encoding", "Float32Encoding", "Int8Encoding", "TokenEncoding", "TokenVectors",
           "as_queries", "encoding_from_state", "maxsim", "maxsim_topk", "rerank"]
