"""Evaluation: M-BEIR, BEIR-style (UMRB, MTEB retrieval) and ViDoRe benchmarks, reference-exact metrics,
resumable runs, TREC run files, Markdown/HTML reports, and an mteb adapter."""

from ..data.beir import load_beir, load_beir_task
from ..data.mbeir import load_mbeir
from ..data.vidore import load_vidore, load_vidore_task
from .metrics import evaluate_run, mean_metrics, modality_bias, query_metrics, trec_order
from .mteb_adapter import MtebEncoder, as_mteb_encoder
from .runner import EvalConfig, Evaluator, evaluate, summarize
from .tasks import CATEGORIES, UMRB_GROUPS, RetrievalTask, category_of


__all__ = ["CATEGORIES", "EvalConfig", "Evaluator", "MtebEncoder", "RetrievalTask", "UMRB_GROUPS",
           "as_mteb_encoder", "category_of", "evaluate", "evaluate_run", "load_beir", "load_beir_task",
           "load_mbeir", "load_vidore", "load_vidore_task", "mean_metrics", "modality_bias", "query_metrics",
           "summarize", "trec_order"]
