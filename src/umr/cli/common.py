"""What the sub-commands share: the one-line usage error, option types, the model options and
the model loader that reports a bad option with the flags the user typed."""

from __future__ import annotations

import argparse

from ..core.registry import UnsupportedOption
from ..models.registry import load_model


class UsageError(RuntimeError):
    """A problem with what the user asked for, reported as one line."""


def positive_int(text: str) -> int:
    """An ``int`` option that must be at least 1 (a batch size, a token bound, ``-k``)."""
    return _at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An ``int`` option that may be 0 (``--rescore-k 0``: none)."""
    return _at_least(text, 0)


def _at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def add_model_options(parser: argparse.ArgumentParser, *, model_required: bool = True,
                      model_help: str = "short name (see `umr models`), hub id or folder") -> None:
    """The model options every command that embeds shares."""
    parser.add_argument("--model", required=model_required, default=None, help=model_help)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="weights dtype (default: the model's own default)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="items per forward pass at most")
    parser.add_argument("--min-image-tokens", type=positive_int, default=None,
                        help="MLLM models: fewest tokens per image")
    parser.add_argument("--max-image-tokens", type=positive_int, default=None,
                        help="MLLM models: most tokens per image")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="most tokens per sequence, longer ones cut as the model's reference cuts them "
                             "(families with a text length limit)")
    parser.add_argument("--max-video-tokens", type=positive_int, default=None,
                        help="video models: most video tokens per item; a longer video is sampled with smaller "
                             "frames, then fewer (default: what fits in --max-length)")
    parser.add_argument("--dim", type=positive_int, default=None,
                        help="keep the first N dimensions of every vector, renormalised (Matryoshka models "
                             "such as qwen3-vl-embedding-*)")


def model_options(args: argparse.Namespace) -> dict:
    """The loader options given on the command line (image token bounds, ...), as ``load_model`` takes them."""
    return {k: getattr(args, k) for k in ("min_image_tokens", "max_image_tokens", "max_length", "max_video_tokens",
                                          "dim")
            if getattr(args, k, None) is not None}


def load_options(args: argparse.Namespace) -> dict:
    """Every ``load_model`` option the command line gives, ``--dtype`` included (what an index
    records, and what Ray workers load with)."""
    options = model_options(args)
    if getattr(args, "dtype", None) is not None:
        options["dtype"] = args.dtype
    return options


def load_model_from_args(args: argparse.Namespace, name: str | None = None, options: dict | None = None, *,
                         multi_vector: bool = False):
    """Load ``name`` (default ``--model``) with ``options`` (default: those on the command line);
    a late-interaction model is refused in one line unless the command takes it (``multi_vector``)."""
    options = model_options(args) if options is None else options
    model = call_loader(load_model, name or args.model, device=args.device, dtype=args.dtype, **options)
    if model.multi_vector and not multi_vector:
        raise UsageError(f"model {name or args.model!r} is a late-interaction (multi-vector) model; umr "
                         f"{args.command} does not take those yet: use the Python API (encode_queries, "
                         f"encode_candidates, score)")
    return model


def call_loader(loader, name: str, **options):
    """``loader(name, **options)`` (``load_model``, ``load_reranker``), an option the family does not
    take or a bad option value reported as a :class:`UsageError` with the flags the user typed."""
    try:
        return loader(name, **options)
    except UnsupportedOption as exc:  # say it with the flags the user typed
        given = ", ".join("--" + option.replace("_", "-") for option in exc.options)
        raise UsageError(f"model {exc.model!r} ({exc.family} family) does not take {given}") from None
    except ValueError as exc:  # a bad option value or device (--device cuda on a CPU-only torch)
        raise UsageError(str(exc)) from None
