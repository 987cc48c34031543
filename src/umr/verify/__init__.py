"""``umr verify``: show, on the user's own weights and hardware, that umr's fast path computes
the vectors the model's reference computes (see :func:`verify`)."""

from .probes import Probe, probe_set
from .references import EmbedsItems, NoReference, Reference, reference_for, reference_from_file
from .report import ProbeResult, Tolerance, VerifyReport
from .rerankers import PairProbe, PairResult, RerankReport, ScoreTolerance, pair_probes, verify_reranker
from .run import compare, verify

__all__ = ["EmbedsItems", "NoReference", "Probe", "ProbeResult", "Reference", "Tolerance", "VerifyReport",
           "compare", "probe_set", "reference_for", "reference_from_file", "verify"]
__all__ += ["PairProbe", "PairResult", "RerankReport", "ScoreTolerance", "pair_probes", "verify_reranker"]
