"""Reranking: one interface over generative MLLMs used zero-shot (MM-Embed's prompt-and-rerank), the
Qwen3-VL-Reranker and text cross-encoders; ``load_reranker`` picks the family."""

from .base import Pair, Reranker, Reranking, ScoreResult
from .registry import RERANKERS, list_rerankers, load_reranker, reranker_key

__all__ = ["Pair", "RERANKERS", "Reranker", "Reranking", "ScoreResult", "list_rerankers", "load_reranker",
           "reranker_key"]
