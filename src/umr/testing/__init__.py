"""Tiny random checkpoints in the real architectures, to try umr and to test it without weights.

Each writer lays out a folder as the real checkpoint is laid out (config, tokenizer, processor,
weights), with a few layers of width 32, so that :func:`umr.load_model` / :func:`umr.rerank.load_reranker`
load it through the same code as the real model, offline and in seconds:

>>> import umr
>>> from umr.testing import write_tiny_gme
>>> model = umr.load_model(write_tiny_gme("tiny-gme"))  # doctest: +SKIP

The vectors mean nothing (random weights); shapes, batching, errors and file formats are real.
umr's library never imports this package.
"""

from .clip_sf import write_tiny_clip, write_tiny_uniir_clip_sf
from .colqwen import write_tiny_colqwen, write_tiny_colqwen_base
from .gme import write_tiny_gme
from .mmembed import write_tiny_mmembed
from .qwen3vl import write_tiny_qwen3vl
from .rerank import write_tiny_cross_encoder, write_tiny_llava_next, write_tiny_qwen2vl_instruct, \
    write_tiny_qwen3vl_reranker
from .synth import ScriptedLogits, write_tiny_generator
from .video import write_test_clip

__all__ = ["ScriptedLogits", "write_tiny_clip", "write_tiny_colqwen", "write_tiny_colqwen_base", "write_tiny_cross_encoder", "write_tiny_generator", "write_tiny_gme",
           "write_tiny_llava_next", "write_tiny_mmembed", "write_tiny_qwen2vl_instruct", "write_tiny_qwen3vl",
           "write_tiny_qwen3vl_reranker", "write_tiny_uniir_clip_sf", "write_test_clip"]
