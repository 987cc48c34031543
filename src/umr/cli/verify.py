"""``umr verify``: compare umr's vectors with the model's reference on a built-in probe set."""

from __future__ import annotations

import json
from pathlib import Path

from ..verify import NoReference, verify
from ..verify.references.vllm import ServerUnreachable, VllmEmbeddingReference, VllmRerankReference, VllmServer
from ..verify.rerankers import NoRerankReference, verify_reranker
from .common import UsageError, add_model_options, load_model_from_args
from .rerank import load_reranker_from_args


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "verify", help="check on this machine that umr computes the vectors the model's reference computes",
        description="Embed a built-in probe set (texts short and past the window, queries with and without an "
                    "instruction, images of every 8-bit PIL mode and odd sizes, fused items, a rendered PDF "
                    "page; generated video clips for video models; token vectors and MaxSim scores for "
                    "late-interaction models) through umr and through the family's reference at its authors' "
                    "default settings, "
                    "in the same dtype on the same device, and print per probe kind the worst cosine and "
                    "max|Δ| against a tolerance that depends on dtype and device. Exit 0 when every probe "
                    "holds, 1 when some differ (they are named). The model options below are the umr "
                    "settings under test: one that departs from the reference's defaults shows what it costs. "
                    "With --reranker, score built-in (query, document) pairs instead and compare the scores "
                    "(max|Δ| and rank agreement per probe kind).",
        epilog="--reference vllm compares with a vLLM server you run (its /v1/embeddings, or /v1/rerank for "
               "--reranker) instead of the family's reference; probes the server refuses are named as errors.")
    add_model_options(parser, model_required=False, model_help="embedder to verify: short name, hub id or folder")
    parser.add_argument("--reranker", default=None, metavar="R",
                        help="verify this reranker instead (short name, hub id or folder)")
    parser.add_argument("--reference", default="auto", metavar="auto|vllm|PATH",
                        help="auto: the family's best reference this machine runs (the authors' code where it "
                             "is installed or shipped in the model folder and runs here, else umr's reference "
                             "loop; the report says which); vllm: a vLLM server (--vllm-url); PATH: a Python "
                             "file defining load(folder, *, device, dtype) that returns an object with "
                             "embed(item) (default: auto)")
    parser.add_argument("--vllm-url", default=None, metavar="URL",
                        help="the vLLM server's base URL, e.g. http://localhost:8000 (with --reference vllm)")
    parser.add_argument("--vllm-model", default=None, metavar="NAME",
                        help="the model name to ask the server for (default: the first it lists at /v1/models)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the report as JSON")
    parser.set_defaults(run=run)


def vllm_server(args) -> VllmServer | None:
    """The server of ``--reference vllm`` (None without it); refused in one line when unreachable."""
    if args.reference != "vllm":
        if args.vllm_url or args.vllm_model:
            raise UsageError("--vllm-url and --vllm-model go with --reference vllm")
        return None
    if not args.vllm_url:
        raise UsageError("--reference vllm needs --vllm-url URL (the server's base URL)")
    try:
        return VllmServer(args.vllm_url, args.vllm_model)
    except ServerUnreachable as exc:
        raise UsageError(str(exc)) from None


def run(args) -> int:
    if (args.model is None) == (args.reranker is None):
        raise UsageError("give --model M (an embedder) or --reranker R, not both")
    server = vllm_server(args)
    if args.reranker is not None:
        report = run_reranker(args, server)
    else:
        embedder = load_model_from_args(args, multi_vector=True)
        if args.batch_size:
            embedder.batch_size = args.batch_size
        try:
            report = verify(embedder, device=args.device,
                            reference=VllmEmbeddingReference(server) if server else args.reference)
        except NoReference as exc:
            raise UsageError(str(exc)) from None
    print(report.table())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    return 0 if report.ok else 1


def run_reranker(args, server: VllmServer | None):
    """``--reranker R``: its scores against its family's reference or the server's."""
    if args.dim is not None or args.max_video_tokens is not None:
        raise UsageError("--dim and --max-video-tokens are embedder options; a reranker does not take them")
    if args.reference not in ("auto", "vllm"):
        raise UsageError("--reranker takes --reference auto or vllm (a reference file is for embedders)")
    options = {key: getattr(args, key) for key in ("min_image_tokens", "max_image_tokens", "max_length")
               if getattr(args, key) is not None}
    reranker = load_reranker_from_args(args, args.reranker, options=options)
    if args.batch_size:
        reranker.batch_size = args.batch_size
    try:
        return verify_reranker(reranker, device=args.device, reference=VllmRerankReference(server) if server else None)
    except NoRerankReference as exc:
        raise UsageError(str(exc)) from None
