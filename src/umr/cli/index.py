"""``umr index``: embed a folder, items JSONL or M-BEIR pool into a persistent index.

Resumable: run the same command again after a crash (or after editing the corpus) and only
what is new or changed is embedded. Bad files are listed in the summary and ``DIR/errors.jsonl``.
On an existing index, options fixed at creation (backend, OCR, model, model options) must
agree with it or are refused; ``--method`` may switch the search method, and the summary says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.devices import check_device
from ..data.chunking import Chunker, ChunkingError
from ..data.corpus import count_corpus
from ..data.video_segments import SegmentError
from ..index import Index, IndexStoreError
from ..index.backends import BACKENDS
from ..index.compact import QUANTIZE
from ..index.milvus import resolve_uri
from .common import UsageError, add_model_options, load_model_from_args, load_options, model_options, nonnegative_int
from .ray_options import add_ray_options, ray_embedder


def add_parser(sub) -> None:
    parser = sub.add_parser("index", help="index a folder, items JSONL or M-BEIR pool (resumable)")
    parser.add_argument("source", type=Path, nargs="?",
                        help="a folder, an items .jsonl, or an M-BEIR candidate pool .jsonl (none with --compact: only compact)")
    parser.add_argument("--index", required=True, type=Path, dest="index_dir", help="index folder")
    add_model_options(parser, model_required=False,
                      model_help="short name (see `umr models`), hub id or folder; required for a new index")
    parser.add_argument("--backend", choices=[b for b in BACKENDS if b != "multivector"], default=None,  # issue 24
                        help="faiss: embedded index in the folder (default); milvus: Milvus Lite or a server")
    parser.add_argument("--uri", default=None,
                        help="Milvus: ./file.db (Milvus Lite) or http://host:19530 (default: INDEX/milvus.db)")
    parser.add_argument("--collection", default=None, help="Milvus collection name (default: umr)")
    parser.add_argument("--method", choices=["exact", "hnsw", "muvera"], default=None,
                        help="exact inner-product search (default) or HNSW for large corpora; late-interaction "
                             "models: exact MaxSim (default) or muvera (MUVERA first stage + exact MaxSim rerank) "
                             "(new index only)")
    parser.add_argument("--quantize", choices=QUANTIZE, default=None,
                        help="faiss: keep int8 codes or sign bits in memory and the float32 vectors on disk, "
                             "rescoring each search's best candidates against them (new index only)")
    parser.add_argument("--rescore-k", type=nonnegative_int, default=None, metavar="N",
                        help="quantised index: candidates rescored with the float32 vectors per search "
                             "(default max(20k, 200); 0: none); recorded as the index's default")
    # issue 24: late-interaction (multi-vector) indexes
    parser.add_argument("--token-storage", choices=["float16", "float32", "int8", "binary"], default="float16",
                        help="late-interaction models: how token vectors are stored (default float16; new index only)")
    parser.add_argument("--pool-factor", type=int, default=None, metavar="F",
                        help="late-interaction models: pool each item's tokens F-fold by hierarchical "
                             "clustering before storing them (new index only)")
    parser.add_argument("--ocr", choices=["auto", "on", "off"], default="auto",
                        help="read the words in images for text-only models (auto: on for text models)")
    parser.add_argument("--image-root", type=Path, default=None, help="M-BEIR pools: folder img_path is relative to")
    parser.add_argument("--prune", action="store_true", help="delete indexed items of SOURCE that are gone from it")
    parser.add_argument("--id-prefix", default=None, metavar="NAME",
                        help="ids are NAME/<id> (default: a folder's name; none for JSONL ids; '' for none)")
    parser.add_argument("--commit-every", type=int, default=256, help="commit after this many items (default 256)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # long texts and compaction (the corpus part)
    parser.add_argument("--chunk-tokens", type=int, default=None, metavar="N",
                        help="split long texts into passages of N model tokens (default: the model's window)")
    parser.add_argument("--chunk-overlap", type=int, default=None, metavar="M",
                        help="tokens shared by consecutive passages (default: N/8)")
    parser.add_argument("--no-chunk", dest="chunk", action="store_false", default=None,
                        help="never split: a long text is embedded as far as the model reads it (counted as cut)")
    parser.add_argument("--segment-seconds", type=float, default=None, metavar="S",
                        help="cut video files into segments of S seconds (default: the longest the model embeds "
                             "at its sampling within --max-length)")
    parser.add_argument("--segment-overlap", type=float, default=None, metavar="S",
                        help="seconds shared by consecutive video segments (default: 0)")
    parser.add_argument("--compact", action="store_true",
                        help="afterwards, reclaim the space of deleted and replaced items")
    add_ray_options(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from tqdm.auto import tqdm

    if args.source is None:
        if not args.compact:
            raise UsageError("say what to index: umr index SOURCE --index DIR (or --compact alone)")
        return _compact_only(args.index_dir)
    if not args.source.exists():
        raise UsageError(f"no such corpus: {args.source}")
    if not (args.source.is_dir() or args.source.suffix.lower() == ".jsonl"):
        raise UsageError(f"{args.source}: a corpus is a folder or a .jsonl file")
    note = ""
    try:
        check_device(args.device)
        if Index.exists(args.index_dir):
            index, note = _open_existing(args)
            action = "updating"
            try:
                index.id_prefix_for(args.source, args.id_prefix)  # a clash is refused before any work
            except IndexStoreError:
                index.close()
                raise
        else:
            if args.model is None:
                raise UsageError(f"{args.index_dir} is a new index: say which model builds it with --model")
            options = load_options(args)
            model = load_model_from_args(args, args.model, model_options(args), multi_vector=True)  # issue 24
            Chunker(model, tokens=args.chunk_tokens, overlap=args.chunk_overlap)  # refused before creating
            ocr = None if args.ocr == "auto" else args.ocr == "on"
            index = Index.create(args.index_dir, model, backend=args.backend or "faiss", uri=args.uri,
                                 collection=args.collection or "umr", method=args.method or "exact", ocr=ocr,
                                 model_options=options, token_storage=args.token_storage,  # issue 24
                                 pool_factor=args.pool_factor, quantize=args.quantize, rescore_k=args.rescore_k)
            action = "creating"
    except (IndexStoreError, ValueError) as exc:  # ChunkingError is a ValueError
        raise UsageError(str(exc)) from None

    with index:
        cfg = index.config
        how = "pixels" if cfg.get("sees_images") else ("text + OCR of images" if cfg.get("ocr") else "text only")
        stored = f", {cfg['quantize']}" if cfg.get("quantize") else ""
        print(f"umr index: {action} {args.index_dir} ({index.store.backend}, {cfg.get('method', 'exact')}{stored}) "
              f"with {cfg['model']['name']} ({cfg['model']['dim']}-d, embeds {how})", file=sys.stderr)
        chunking_before = cfg.get("chunking")
        total = count_corpus(args.source)
        show = not args.no_progress
        embedder = ray_embedder(args, args.model or _recorded_source(index), index.model_load_options())
        with tqdm(total=total, unit="item", desc="index", disable=not show, dynamic_ncols=True,
                  file=sys.stderr, smoothing=0.1) as bar:
            try:
                summary = index.index_corpus(args.source, image_root=args.image_root,
                                             commit_every=args.commit_every, batch_size=args.batch_size,
                                             prune=args.prune, progress=_advance(bar), id_prefix=args.id_prefix,
                                             chunk=args.chunk, chunk_tokens=args.chunk_tokens,
                                             chunk_overlap=args.chunk_overlap, embedder=embedder,
                                             segment_seconds=args.segment_seconds,
                                             segment_overlap=args.segment_overlap)
            except (IndexStoreError, ChunkingError, SegmentError) as exc:
                raise UsageError(str(exc)) from None
            finally:
                if embedder is not None:
                    embedder.close()
        errors_path = Path(args.index_dir) / "errors.jsonl"
        print(f"umr index: {summary.line()} in {summary.seconds:.1f}s; the index holds {len(index)} items")
        if note:
            print(f"  {note}")
        if summary.skipped:
            print(f"  {len(summary.skipped)} item(s) have no usable representation under "
                  f"{cfg['model']['name']}: {_why(summary.skipped[0]['error'])}")
            for entry in summary.skipped[:20]:
                print(f"    {entry['id']}")
            if len(summary.skipped) > 20:
                print(f"    ... and {len(summary.skipped) - 20} more")
        if summary.errors:
            print(f"  {len(summary.errors)} error(s):")
            for entry in summary.errors[:20]:
                name = entry["id"] if entry["id"] is not None else f"line {entry['line']}"
                print(f"    {name}: {entry['error']}")
            if len(summary.errors) > 20:
                print(f"    ... and {len(summary.errors) - 20} more")
        chunking = index.config.get("chunking") or {}
        if chunking_before and chunking_before != chunking:
            print(f"  chunking changed from {_settings(chunking_before)} to {_settings(chunking)}: long texts "
                  f"are re-split, their old passages replaced")
        _print_read_report(summary.read, chunking, cfg["model"]["name"])
        if summary.skipped or summary.errors or summary.read.ignored:
            print(f"  details: {errors_path}")
        if args.compact:
            _compact(index)
    return 0


def _open_existing(args):
    """Open the index at ``--index`` for writing; refuse options that cannot change it.

    Returns the index and a note for the summary about a change made (a switched search method).
    """
    index = Index.open(args.index_dir, writable=True, device=args.device)
    try:
        cfg, backend = index.config, index.store.backend
        refused = []
        if args.backend is not None and args.backend != backend:
            refused.append(f"--backend {args.backend} (it is a {backend} index)")
        if backend != "milvus":
            refused += [f"{flag} (a faiss index lives in its folder)" for flag, value
                        in (("--uri", args.uri), ("--collection", args.collection)) if value is not None]
        else:
            where = index.store.manifest
            if args.uri is not None and resolve_uri(args.uri, index.folder) != where["uri"]:
                refused.append(f"--uri {args.uri} (its vectors live at {where['uri']})")
            if args.collection is not None and args.collection != where["collection"]:
                refused.append(f"--collection {args.collection} (its collection is {where['collection']!r})")
        if args.quantize is not None and args.quantize != cfg.get("quantize"):
            refused.append(f"--quantize {args.quantize} (it stores {cfg.get('quantize') or 'float32'} vectors)")
        if args.ocr != "auto" and (args.ocr == "on") != bool(cfg.get("ocr")):
            refused.append(f"--ocr {args.ocr} (it was built with OCR {'on' if cfg.get('ocr') else 'off'}; "
                           f"OCR decides every image item's text, so it is fixed when the index is created)")
        recorded = cfg["model"].get("options") or {}
        identity = index.recorded_identity
        # what the model was really built with: the options given then, and the family's resolved
        # values (so --dtype float32 on a model whose default is float32 is no change)
        effective = {**recorded, **(identity.options if identity is not None else {})}
        changed = {k: v for k, v in load_options(args).items() if effective.get(k) != v}
        if changed:
            shown = ", ".join(f"--{k.replace('_', '-')} {v} (built with {effective.get(k, 'the default')})"
                              for k, v in sorted(changed.items()))
            refused.append(f"{shown}: model options change every vector")
        if refused:
            raise UsageError(f"{args.index_dir} already exists and these options cannot change it: "
                             f"{'; '.join(refused)}. Drop them, or build a new index")
        notes = []
        if args.rescore_k is not None and args.rescore_k != cfg.get("rescore_k"):
            if not cfg.get("quantize"):
                raise UsageError(f"{args.index_dir}: --rescore-k is for a quantised index (--quantize); this one "
                                 f"holds float32 vectors")
            cfg = {**cfg, "rescore_k": args.rescore_k}
            index.store.set_config(cfg)
            notes.append(f"searches now rescore {args.rescore_k} candidates by default")
        method = cfg.get("method", "exact")
        if args.method is not None and args.method != method:
            if backend == "multivector":  # issue 24
                raise UsageError(f"{args.index_dir}: a late-interaction index keeps the --method it was created "
                                 f"with ({method}); umr search --exact skips a first stage")
            if backend != "faiss":
                raise UsageError(f"{args.index_dir}: Milvus keeps the vector index it was created with; "
                                 f"re-create the index to change --method")
            if args.method not in ("exact", "hnsw"):
                raise UsageError(f"{args.index_dir}: --method {args.method} is for late-interaction indexes; "
                                 f"a single-vector index searches exact or hnsw")
            index.store.set_config({**cfg, "method": args.method})
            notes.append(f"search method switched from {method} to {args.method} (the stored vectors are kept)")
        try:
            model = index.load_model(args.model)  # as recorded: its options, and its dtype where it matters
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        index.use_model(model)
    except BaseException:
        index.close()
        raise
    return index, "; ".join(notes)


def _recorded_source(index) -> str:
    identity = index.recorded_identity
    return identity.source if identity is not None else index.model_name


def _why(reason: str) -> str:
    return reason.split(": ", 1)[-1]


def _advance(bar):
    """The bar's update; the total (counted per file) grows when long texts turn out to be passages."""
    def advance(n: int) -> None:
        bar.update(n)
        if bar.total is not None and bar.n > bar.total:
            bar.total = bar.n
            bar.refresh()

    return advance


def _settings(chunking: dict) -> str:
    if not chunking.get("enabled", True):
        return "off"
    return f"{chunking.get('tokens')} tokens, overlap {chunking.get('overlap')}"


def _print_read_report(read, chunking: dict, model_name: str) -> None:
    """What the reader passed over (by extension) and reshaped (passages, texts the model cuts)."""
    if read.ignored:
        kinds = sorted(read.ignored_by_kind().items(), key=lambda kv: (-kv[1], kv[0]))
        print(f"  ignored {len(read.ignored)} file(s) umr does not read: "
              + ", ".join(f"{n} {kind}" for kind, n in kinds))
    if read.passages:
        what = " and ".join(part for part in (f"{read.split_texts} long text(s)" if read.split_texts else "",
                                              f"{read.split_pages} PDF page(s)" if read.split_pages else "") if part)
        beside = (f"; beside a page image, what the image leaves: down to {read.page_passage_tokens}"
                  if read.page_passage_tokens else "")
        print(f"  split {what} into {read.passages} passages of at most {chunking.get('tokens')} tokens "
              f"(overlap {chunking.get('overlap')}{beside})")
    if read.truncated:
        shown = ", ".join(read.truncated[:5]) + (f" and {len(read.truncated) - 5} more" if len(read.truncated) > 5 else "")
        print(f"  {len(read.truncated)} item(s) longer than {model_name} reads were cut to its window: {shown}")


def _compact(index) -> None:
    before = _folder_bytes(index.folder)
    index.compact()
    print(f"umr index: compacted {index.folder}: {_size(before)} -> {_size(_folder_bytes(index.folder))} "
          f"on disk; {len(index)} items")


def _compact_only(folder: Path) -> int:
    try:
        index = Index.open(folder, writable=True)
    except (IndexStoreError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    with index:
        _compact(index)
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
