"""``umr verify``: compare umr's vectors with the model's reference on a built-in probe set."""

from __future__ import annotations

import json
from pathlib import Path

from ..verify import NoReference, verify
from .common import UsageError, add_model_options, load_model_from_args


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
                    "settings under test: one that departs from the reference's defaults shows what it costs.")
    add_model_options(parser)
    parser.add_argument("--reference", default="auto", metavar="auto|PATH",
                        help="auto: the family's best reference this machine runs (the authors' code where it "
                             "is installed or shipped in the model folder and runs here, else umr's reference "
                             "loop; the report says which); PATH: a Python file defining load(folder, *, device, "
                             "dtype) that returns an object with embed(item) (default: auto)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the report as JSON")
    parser.set_defaults(run=run)


def run(args) -> int:
    embedder = load_model_from_args(args, multi_vector=True)
    if args.batch_size:
        embedder.batch_size = args.batch_size
    try:
        report = verify(embedder, device=args.device, reference=args.reference)
    except NoReference as exc:
        raise UsageError(str(exc)) from None
    print(report.table())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.ok else 1
