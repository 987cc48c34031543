"""``--ray`` for every command that embeds (``umr index``, ``umr embed``, ``umr eval``): the
options, and the :class:`~umr.index.ray_embed.RayEmbedder` they ask for."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..index import ray_embed
from ..models.catalog import REGISTRY
from ..models.registry import load_model
from .common import UsageError, load_options


def add_ray_options(parser) -> None:
    group = parser.add_argument_group("embedding on Ray (pip install 'umr[ray]')")
    group.add_argument("--ray", action="store_true", help="embed on a Ray cluster: one model per worker")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="auto (a running local cluster) or ray://head:10001 (default: start a local Ray)")
    group.add_argument("--workers", type=int, default=2, metavar="N", help="Ray workers (default 2)")
    group.add_argument("--gpus-per-worker", type=float, default=0, metavar="G", help="GPUs per worker (default 0)")


def ray_embedder(args, source: str, options: dict | None = None):
    """A RayEmbedder whose workers load ``source`` with ``options`` (default: the model options
    and ``--dtype`` given on the command line), or None without --ray."""
    if not args.ray:
        return None
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    options = load_options(args) if options is None else options
    if source not in REGISTRY and Path(source).expanduser().exists():  # workers may run in another folder
        source = str(Path(source).expanduser().resolve())
    try:
        return ray_embed.RayEmbedder(partial(load_model, source, device=args.device, **options), workers=args.workers,
                           gpus_per_worker=args.gpus_per_worker, address=args.ray_address)
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'umr[ray]'") from None
    except (ConnectionError, RuntimeError) as exc:  # no cluster at --ray-address, or it refused us
        reason = " ".join(str(exc).split())[:300]
        raise UsageError(f"cannot start or reach Ray ({args.ray_address or 'local'}): {reason}") from None
