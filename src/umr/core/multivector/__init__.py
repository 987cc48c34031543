"""Late interaction's shared kernel: ragged token vectors, how they are stored, and exact MaxSim.

It lives in the leaf layer because both sides of late interaction need the one MaxSim: a
:class:`~umr.models.multivector.MultiVectorEmbedder` scores with it (``score``), the
multi-vector index (:mod:`umr.index.multivector`) searches with it, and evaluation ranks with it.

* :mod:`.tokens` — :class:`~.tokens.TokenVectors`: documents' token vectors concatenated, with offsets.
* :mod:`.encoding` — float32, float16, int8 and sign-bit storage (int8 and bits on :mod:`umr.core.quantize`).
* :mod:`.maxsim` — :func:`~.maxsim.maxsim`, :func:`~.maxsim.maxsim_topk`, :func:`~.maxsim.rerank`.
"""
