"""``umr serve``: the HTTP API (OpenAI-style embeddings, search, rerank, items) and the search page.

Safe by default: it binds to loopback; any other address needs a bearer token.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..index import Index, IndexStoreError
from ..rerank import load_reranker
from .common import UsageError, load_model_from_args


def add_parser(sub) -> None:
    parser = sub.add_parser("serve", help="serve embeddings, search and a search page over HTTP")
    parser.add_argument("--index", type=Path, default=None, dest="index_dir",
                        help="index folder to search (its recorded model is served unless --model says otherwise)")
    parser.add_argument("--model", default=None, help="model to serve (default: the index's own; required without --index)")
    parser.add_argument("--rerank", default=None, metavar="MODEL", help="reranker for /v1/rerank and search rerank")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("UMR_SERVE_TOKEN"),
                        help="bearer token every API call must carry; required beyond loopback "
                             "(default: $UMR_SERVE_TOKEN)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser calls from this origin (repeatable; default: CORS off)")
    parser.add_argument("--image-host", action="append", default=[], metavar="HOST",
                        help="http(s) image URLs on this host may be fetched (repeatable; default: none)")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body (default 16 MB)")
    parser.add_argument("--max-items", type=int, default=128, help="most inputs per request (default 128)")
    parser.add_argument("--no-batching", action="store_true", help="run requests one at a time")
    parser.add_argument("--batch-window-ms", type=float, default=2.0,
                        help="how long a request that finds the model idle waits for others to share its "
                             "forward pass (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the model (default: all cores but one, left to HTTP)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.set_defaults(run=run)


def run(args) -> int:
    # imported here, not above: umr.serve needs fastapi, an optional extra (pip install 'umr[serve]'),
    # and every other command must run without it
    from ..serve import Limits, Security, check_bind, create_app
    from ..serve.batcher import server_torch_threads

    try:
        check_bind(args.host, args.token)  # before anything slow: refuse at once
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, not {args.threads}")
    if args.index_dir is None and args.model is None:
        raise UsageError("give --index DIR, --model MODEL, or both")
    import uvicorn

    index, model = None, None
    if args.index_dir is not None:
        try:
            index = Index.open(args.index_dir, model=args.model, writable=True, device=args.device, dtype=args.dtype)
            model = index.model
        except (IndexStoreError, ValueError) as exc:
            raise UsageError(" ".join(str(exc).split())) from None
    else:
        args.min_image_tokens = args.max_image_tokens = args.max_length = args.dim = None
        model = load_model_from_args(args, multi_vector=True)  # a late-interaction one: /pooling token_embed
    reranker = None
    if args.rerank:
        reranker = load_reranker(args.rerank, device=args.device)
    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_items=args.max_items)
    security = Security(token=args.token, image_hosts=frozenset(h.lower() for h in args.image_host),
                        cors_origins=tuple(args.cors_origin))
    app = create_app(model, index=index, reranker=reranker, limits=limits, security=security,
                     batching=not args.no_batching, window_ms=args.batch_window_ms,
                     torch_threads=args.threads or server_torch_threads())
    print(f"umr serve: {model.name} ({model.dim}-d)" + (f", index {args.index_dir} ({len(index)} items)" if index else "")
          + f" on http://{args.host}:{args.port}/  (API docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", server_header=False)  # closes the index
    return 0
