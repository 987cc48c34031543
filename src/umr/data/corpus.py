"""Corpus readers for ``umr index``: a folder, an items JSONL, or an M-BEIR candidate pool.

Every reader yields :class:`~umr.core.entries.Entry` objects (or :class:`~umr.core.items.ItemError` for what cannot
even be listed). An entry knows its id and a content fingerprint *before* anything is decoded,
so a re-run can say "unchanged" cheaply; ``entry.load()`` builds the :class:`~umr.core.items.Item`
and raises ``ItemError`` for a bad file.

Folder rules: images (jpg, jpeg, png, webp, gif, bmp, tif, tiff), text (txt, md), PDF (one item
per page: the rendered page image together with its text layer), video (mp4, mov, webm, mkv, avi:
one item per time segment, ``talk.mp4#t=120,150``; see :mod:`umr.data.video_segments`). An image with a sidecar
``NAME.txt`` (or ``NAME.jpg.txt``) becomes one fused item and the sidecar is not indexed on its
own. Ids are paths relative to the folder (``report.pdf#page=2`` for PDF pages,
``notes/report.txt#chunk=3`` for the passages of a long text, ``report.pdf#page=2&chunk=3`` for
those of a page whose text layer does not fit, each holding the page image); the index puts the source's
prefix in front (:func:`default_id_prefix`). Paths are stored resolved (absolute), so results
open from any working directory. Fingerprints are :mod:`umr.core.fingerprint`'s. Symlinks to files
and folders are followed; each folder is read once (a symlink loop is passed over). Hidden
names, other file types and special files are not read and are listed in :class:`~umr.core.entries.ReadReport`.
A name that is not valid UTF-8 keeps its bytes: the id shows them as ``\\xNN`` and the stored
path is a ``file:`` URI (:func:`umr.data.files.fs_path` gives the OS path back).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from ..core.entries import Entry, EntryKind, ReadReport
from ..core.fingerprint import FileDigests, file_digest, item_fingerprint
from ..core.images import image_size
from ..core.items import Item, ItemError
from .chunking import Chunker, Passage, passage_id
from .files import display_name, jsonl_records, stored_path
from .items import read_items_jsonl
from .mbeir import parse_candidate
from .video_segments import VIDEO_EXTENSIONS, VideoSegmenter, item_video_entries, video_entries

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
TEXT_EXTENSIONS = {".txt", ".md"}
PDF_EXTENSIONS = {".pdf"}
#: larger text files are refused: a text file is held in memory whole to be split into passages
MAX_TEXT_BYTES = 50_000_000
#: PDF pages are rendered at this many pixels on the longer side
PDF_RENDER_SIDE = 1280


def read_corpus(source: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                digests: FileDigests | None = None, chunker: Chunker | None = None,
                report: ReadReport | None = None, videos: VideoSegmenter | None = None) -> Iterator[Entry | ItemError]:
    """Entries of a folder, an items JSONL or an M-BEIR pool JSONL (detected from its fields).

    ``digests`` remembers file digests across runs (see :mod:`umr.core.fingerprint`). With a
    ``chunker`` long texts (text files, text-only JSONL items, PDF pages' text layers) become passages and texts the
    model would cut are listed in ``report.truncated``; M-BEIR pools keep their ids and are
    never split. ``videos`` cuts a folder's video files and a JSONL's video items into segments
    (without one, or under a model that cannot see video, each video is an error).
    """
    source = Path(source)
    report = report if report is not None else ReadReport()
    if source.is_dir():
        yield from read_folder(source, digests=digests, chunker=chunker, report=report, videos=videos)
    elif source.is_file() and source.suffix.lower() == ".jsonl":
        if _is_mbeir_pool(source):
            yield from read_mbeir_pool(source, image_root=image_root, digests=digests, chunker=chunker,
                                       report=report)
        else:
            yield from read_jsonl(source, digests=digests, chunker=chunker, report=report, videos=videos)
    elif source.is_file():
        raise ValueError(f"{source}: a corpus is a folder or a .jsonl file")
    else:
        raise FileNotFoundError(f"no such corpus: {source}")


def default_id_prefix(source: str | os.PathLike) -> str:
    """The id prefix of a source indexed without ``--id-prefix``: a folder's name (two folders'
    ``notes.txt`` are ``A/notes.txt`` and ``B/notes.txt``); none for JSONL files and M-BEIR
    pools, whose ids are given explicitly."""
    path = Path(source).resolve()
    return path.name if path.is_dir() else ""


def count_corpus(source: str | os.PathLike) -> int | None:
    """How many items a corpus will yield, cheaply (PDF pages counted, passages not), or None."""
    source = Path(source)
    if source.is_dir():
        total = 0
        for found in _walk_folder(source.resolve(), ReadReport()):
            if not isinstance(found, ItemError) and found[0].suffix.lower() in PDF_EXTENSIONS:
                total += _pdf_page_count(found[0]) or 1
            else:
                total += 1
        return total
    if source.is_file():
        with source.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    return None


# -- folders ---------------------------------------------------------------------------------------


def _walk_folder(root: Path, report: ReadReport) -> Iterator[tuple[Path, Path | None] | ItemError]:
    """(file, sidecar) pairs of indexable files in sorted order, sidecars folded into their image.

    Symlinks are followed, to files and folders alike; each folder is read once, so a link
    back to a folder already read (a loop) or a second link to one folder is passed over and
    reported. Hidden names (``.git``, ``.DS_Store``), other extensions and special files
    (sockets, devices) are reported as ignored; a folder that cannot be listed and a broken
    symlink are errors.
    """
    entered: set[tuple[int, int]] = set()

    def walk(folder: Path) -> Iterator[tuple[Path, Path | None] | ItemError]:
        rel = _rel(folder, root) or "."
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in entered:
                report.ignore(rel + "/", "link", "a folder already read (a symlink loop, or a second link to it)")
                return
            entered.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                listing = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield ItemError(rel, f"cannot list folder: {exc.strerror or exc}")
            return
        files, folders = [], []
        for entry in listing:
            name = display_name(entry.name)
            if entry.name.startswith("."):
                slash = "/" if entry.is_dir() else ""  # a folder is one entry, its contents unread
                report.ignore(_rel(Path(entry.path), root) + slash, "hidden", "hidden name (starts with a dot)")
                continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError as exc:
                yield ItemError(_rel(Path(entry.path), root), f"cannot read: {exc.strerror or exc}")
                continue
            if is_dir:
                folders.append(entry.name)
            elif is_file:
                files.append(entry.name)
            elif entry.is_symlink():
                yield ItemError(_rel(Path(entry.path), root),
                                f"broken symbolic link (to {display_name(os.readlink(entry.path))})")
            else:
                report.ignore(_rel(Path(entry.path), root), "special", f"{name} is not a regular file")
        present = set(files)
        sidecars = set()
        for name in files:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                sidecars.update(c for c in (Path(name).stem + ".txt", name + ".txt") if c in present)
        for name in files:
            if name in sidecars:
                continue
            path = folder / name
            ext = path.suffix.lower()
            if ext in IMAGE_EXTENSIONS:
                sidecar = next((folder / c for c in (path.stem + ".txt", name + ".txt") if c in present), None)
                yield path, sidecar
            elif ext in TEXT_EXTENSIONS or ext in PDF_EXTENSIONS or ext in VIDEO_EXTENSIONS:
                yield path, None
            else:
                report.ignore(_rel(path, root), ext or "no extension",
                              "not a file type umr reads (images, .txt, .md, .pdf, videos)")
        for name in folders:
            yield from walk(folder / name)

    yield from walk(root)


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as an id: POSIX separators, names that are not UTF-8 escaped."""
    return display_name(path.relative_to(root).as_posix()) if path != root else ""


def read_folder(root: str | os.PathLike, *, digests: FileDigests | None = None, chunker: Chunker | None = None,
                report: ReadReport | None = None, videos: VideoSegmenter | None = None) -> Iterator[Entry | ItemError]:
    root = Path(root).resolve()
    report = report if report is not None else ReadReport()
    for found in _walk_folder(root, report):
        if isinstance(found, ItemError):
            yield found
            continue
        path, sidecar = found
        rel = _rel(path, root)
        ext = path.suffix.lower()
        meta = {"file": rel, "folder": Path(rel).parent.as_posix(), "ext": ext.lstrip(".")}
        try:
            digest = file_digest(path, digests=digests)
            if sidecar is not None:
                digest = hashlib.blake2b((digest + file_digest(sidecar, digests=digests)).encode(),
                                         digest_size=16).hexdigest()
        except OSError as exc:
            yield ItemError(rel, f"cannot read file: {exc.strerror or exc}")
            continue
        stored = stored_path(path)
        if ext in IMAGE_EXTENSIONS:
            yield Entry(rel, digest, _image_loader(path, sidecar, rel, chunker, report), stored,
                        EntryKind.CAPTIONED_IMAGE if sidecar else EntryKind.IMAGE, meta)
        elif ext in TEXT_EXTENSIONS:
            yield from _text_entries(path, rel, digest, stored, meta, chunker, report)
        elif ext in VIDEO_EXTENSIONS:
            yield from video_entries(path, rel, digest, stored, meta, videos)
        else:
            yield from _pdf_entries(path, rel, digest, stored, meta, chunker, report)


def read_text_file(path: Path, item_id: str) -> str:
    """A text file's contents, or ItemError for empty, huge or binary files."""
    size = path.stat().st_size
    if size == 0:
        raise ItemError(item_id, "empty file")
    if size > MAX_TEXT_BYTES:
        raise ItemError(item_id, f"text file too large ({size / 1e6:.1f} MB; the limit is "
                                 f"{MAX_TEXT_BYTES / 1e6:.0f} MB, as a text is held in memory whole "
                                 f"to be split into passages): split it into smaller files")
    data = path.read_bytes()
    if b"\x00" in data:
        raise ItemError(item_id, "binary data, not text (contains NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
        printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
        if printable < 0.95 * len(text):
            raise ItemError(item_id, "binary data, not text (not valid UTF-8)") from None
    text = text.lstrip("\ufeff").strip()
    if not text:
        raise ItemError(item_id, "empty file (only whitespace)")
    return text


def _text_entries(path: Path, rel: str, digest: str, stored: str, meta: dict[str, Any],
                  chunker: Chunker | None, report: ReadReport) -> Iterator[Entry]:
    if chunker is None or not chunker.splits or chunker.fits_bytes(path.stat().st_size):
        def load() -> Item:  # read when embedded, not on every run
            text = read_text_file(path, rel)
            _note_truncation(chunker, report, rel, text)
            return Item.candidate(text=text, id=rel)

        yield Entry(rel, digest, load, stored, EntryKind.TEXT, meta)
        return
    try:
        text = read_text_file(path, rel)
    except ItemError as exc:  # raised on load, so an indexed file that turned bad loses its old version
        yield Entry(rel, digest, _raiser(exc), stored, EntryKind.TEXT, meta)
        return
    yield from _passage_entries(rel, digest, text, stored, EntryKind.TEXT, meta, chunker, report)


def _passage_entries(item_id: str, fingerprint: str, text: str, path: str | None, kind: EntryKind,
                     meta: dict[str, Any], chunker: Chunker, report: ReadReport, *,
                     explicit_id: bool = True) -> Iterator[Entry]:
    """One entry for a text that fits the window (its own id); else ``ID#chunk=N`` per passage."""
    whole = Entry(item_id, fingerprint, lambda: Item.candidate(text=text, id=item_id), path, kind, meta,
                  explicit_id=explicit_id)
    yield from _split_entries(whole, text, chunker, report, lambda passage, pid: (
        item_fingerprint(Item.candidate(text=passage.text)), lambda: Item.candidate(text=passage.text, id=pid)))


def _split_entries(whole: Entry, text: str | None, chunker: Chunker, report: ReadReport,
                   part: Callable[[Passage, str], tuple[str, Callable[[], Item]]]) -> Iterator[Entry]:
    """``whole`` when ``text`` fits one passage (a blank text too: it is reported as no text);
    else one entry per passage (:func:`~umr.data.chunking.passage_id`, N from 1), each keeping
    ``whole``'s path, kind and metadata plus ``chunk``, ``chunks`` and the passage's character
    ``offset``; ``part(passage, id)`` gives its fingerprint and loader."""
    passages = chunker.split(text) if text else []
    if len(passages) <= 1:
        yield whole
        return
    report.split(whole.kind, len(passages))
    for number, passage in enumerate(passages, start=1):
        pid = passage_id(whole.id, number)
        fingerprint, loader = part(passage, pid)
        yield Entry(pid, fingerprint, loader, whole.path, whole.kind,
                    {**whole.meta, "chunk": number, "chunks": len(passages), "offset": passage.start},
                    explicit_id=whole.explicit_id)


def _raiser(error: ItemError) -> Callable[[], Item]:
    def load() -> Item:
        raise error

    return load


def _note_truncation(chunker: Chunker | None, report: ReadReport, item_id: str, text: str | None) -> None:
    if chunker is not None and chunker.overflows(text):
        report.truncated.append(item_id)


def _image_loader(path: Path, sidecar: Path | None, item_id: str, chunker: Chunker | None,
                  report: ReadReport) -> Callable[[], Item]:
    def load() -> Item:
        image_size(path, item_id=item_id)  # header check: non-images and bombs fail here
        caption = None
        if sidecar is not None:
            try:
                caption = read_text_file(sidecar, item_id)
            except ItemError as exc:
                raise ItemError(item_id, f"sidecar {display_name(sidecar.name)}: {exc.reason}") from None
            _note_truncation(chunker, report, item_id, caption)
        return Item.candidate(text=caption, image=str(path), id=item_id)

    return load


def _pdf_page_count(path: Path) -> int | None:
    try:
        import pypdfium2 as pdfium

        doc = pdfium.PdfDocument(str(path))
        try:
            return len(doc)
        finally:
            doc.close()
    except Exception:  # noqa: BLE001 - a broken PDF is reported when read
        return None


def _pdf_entries(path: Path, rel: str, digest: str, stored: str, meta: dict[str, Any],
                 chunker: Chunker | None, report: ReadReport) -> Iterator[Entry | ItemError]:
    """One entry per page (``FILE#page=P``), or, when its text layer does not fit the room the
    model leaves beside the page image, one per passage (``FILE#page=P&chunk=N``), each holding
    the page image and its passage. Splitting reads every page's text on each run (the ids
    depend on it); without it (``--no-chunk``, no window) nothing is read before loading."""
    try:
        import pypdfium2 as pdfium
    except ImportError:
        yield ItemError(rel, "PDF support needs pypdfium2: pip install 'umr[index]'")
        return
    splitting = chunker is not None and chunker.splits
    try:
        doc = pdfium.PdfDocument(str(path))
        try:  # what splitting needs, read before anything is yielded (the file is not held open)
            layers = [_page_layer(doc, number) for number in range(1, len(doc) + 1)] if splitting else None
            pages = len(doc)
        finally:
            doc.close()
    except pdfium.PdfiumError as exc:
        yield ItemError(rel, "encrypted (a password is needed)" if exc.err_code == pdfium.raw.FPDF_ERR_PASSWORD
                        else f"broken PDF: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - pdfium raises its own error types
        yield ItemError(rel, f"broken PDF: {exc}")
        return
    if pages == 0:
        yield ItemError(rel, "PDF has no pages")
        return
    rendered = _PdfPages(path)
    for number in range(1, pages + 1):
        page_id = f"{rel}#page={number}"
        whole = Entry(page_id, f"{digest}:{number}", _pdf_page_loader(rendered, number, page_id, chunker, report),
                      stored, EntryKind.PDF_PAGE, {**meta, "page": number})
        if layers is None:
            yield whole
            continue
        layer = layers[number - 1]
        if isinstance(layer, Exception):  # raised on load, so an indexed page that turned bad loses its old version
            whole.loader = _raiser(ItemError(page_id, f"PDF page cannot be read: {layer}"))
            yield whole
            continue
        text, size = layer
        beside = chunker.beside_image(*size)
        split = report.split_pages
        yield from _split_entries(whole, text, beside, report, lambda passage, pid: (
            f"{digest}:{number}:{item_fingerprint(Item.candidate(text=passage.text))}",
            _pdf_passage_loader(rendered, number, pid, passage.text)))
        if report.split_pages > split and beside.tokens < chunker.tokens:
            report.page_passage_tokens = min(report.page_passage_tokens or beside.tokens, beside.tokens)


def _page_layer(doc, number: int) -> tuple[str, tuple[int, int]] | Exception:
    """Page ``number``'s text layer and rendered size, or what pdfium raised reading it."""
    try:
        page = doc[number - 1]
        return _page_text(page), _page_pixels(page)
    except Exception as exc:  # noqa: BLE001 - one bad page is that page's error
        return exc


def _page_text(page) -> str:
    """A pdfium page's text layer, line breaks normalised, stripped."""
    return page.get_textpage().get_text_range().replace("\r\n", "\n").strip()


def _page_pixels(page) -> tuple[int, int]:
    """``(width, height)`` of the page as :class:`_PdfPages` renders it (pdfium rounds each side up)."""
    width, height = page.get_size()
    scale = _render_scale(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def _render_scale(width: float, height: float) -> float:
    return PDF_RENDER_SIDE / max(width, height, 1)


class _PdfPages:
    """One PDF's pages as rendered images and text layers, the last page kept: a page's passages,
    loaded one after another, render it once and share the image."""

    def __init__(self, path: Path):
        self.path = path
        self._last: tuple[int, Any, str] | None = None

    def read(self, number: int, item_id: str) -> tuple[Any, str]:
        """``(image, text)`` of page ``number`` (from 1); ``ItemError`` when pdfium cannot render it."""
        if self._last is not None and self._last[0] == number:
            return self._last[1], self._last[2]
        import pypdfium2 as pdfium

        try:
            doc = pdfium.PdfDocument(str(self.path))
            try:
                page = doc[number - 1]
                image = page.render(scale=_render_scale(*page.get_size())).to_pil().convert("RGB")
                text = _page_text(page)
            finally:
                doc.close()
        except Exception as exc:  # noqa: BLE001
            raise ItemError(item_id, f"PDF page cannot be rendered: {exc}") from None
        self._last = (number, image, text)
        return image, text


def _pdf_page_loader(pages: _PdfPages, number: int, item_id: str, chunker: Chunker | None,
                     report: ReadReport) -> Callable[[], Item]:
    def load() -> Item:
        image, text = pages.read(number, item_id)
        _note_truncation(chunker.beside_image(*image.size) if chunker is not None else None, report, item_id, text)
        return Item.candidate(text=text or None, image=image, id=item_id)

    return load


def _pdf_passage_loader(pages: _PdfPages, number: int, item_id: str, text: str) -> Callable[[], Item]:
    def load() -> Item:
        image, _ = pages.read(number, item_id)
        return Item.candidate(text=text, image=image, id=item_id)

    return load


# -- JSONL -----------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike, *, digests: FileDigests | None = None, chunker: Chunker | None = None,
               report: ReadReport | None = None, videos: VideoSegmenter | None = None) -> Iterator[Entry | ItemError]:
    """Items JSONL (the ``umr embed`` fields; other fields become metadata). Ids default to ``line-N``
    (``explicit_id`` False). Image paths are resolved; images are fingerprinted by their bytes.
    A long text-only item becomes passages (``ID#chunk=N``); text with an image is never split.
    A video item is cut by ``videos`` into time segments (``ID#t=a,b``; see
    :func:`~umr.data.video_segments.item_video_entries`).
    """
    report = report if report is not None else ReadReport()

    for line_no, parsed in read_items_jsonl(path):
        if isinstance(parsed, ItemError):
            yield parsed
            continue
        item = parsed
        explicit = item.id is not None
        item_id = item.id if explicit else f"line-{line_no}"
        if item.video is not None:
            for entry in item_video_entries(item, item_id, videos, digests=digests, explicit_id=explicit):
                yield ItemError(entry.item_id, entry.reason, line=line_no) if isinstance(entry, ItemError) else entry
            continue
        item.id, item.is_query, item.instruction = item_id, False, None
        image = item.image if isinstance(item.image, str) else None
        kind = _kind(item.image, item.text)
        fp = item_fingerprint(item, digests=digests)
        if item.image is None and chunker is not None and chunker.splits:
            yield from _passage_entries(item_id, fp, item.text, None, kind, dict(item.metadata), chunker, report,
                                        explicit_id=explicit)
            continue
        yield Entry(item_id, fp, (lambda it=item: _checked(it, chunker, report)), image,
                    kind, dict(item.metadata), explicit_id=explicit)


def _checked(item: Item, chunker: Chunker | None, report: ReadReport) -> Item:
    _note_truncation(chunker, report, item.id, item.text)
    if item.image is not None:
        image_size(item.image, item_id=item.id)
    return item


# -- M-BEIR candidate pools ------------------------------------------------------------------------


def _is_mbeir_pool(path: Path) -> bool:
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(record, dict) and "did" in record
    return False


def _mbeir_image_root(pool: Path) -> Path:
    for folder in [pool.parent, *pool.parents]:
        if (folder / "mbeir_images").is_dir():
            return folder
    return pool.parent


def read_mbeir_pool(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                    digests: FileDigests | None = None, chunker: Chunker | None = None,
                    report: ReadReport | None = None) -> Iterator[Entry | ItemError]:
    """An M-BEIR candidate pool (``did``, ``txt``, ``img_path``, ``modality``) as a corpus.

    ``img_path`` is relative to ``image_root`` (default: the nearest folder above the pool that
    holds ``mbeir_images``). Other fields become metadata.
    """
    path = Path(path).resolve()
    report = report if report is not None else ReadReport()
    root = (Path(image_root).expanduser().resolve() if image_root is not None else _mbeir_image_root(path))
    for line_no, record in jsonl_records(path):
        try:
            if isinstance(record, ItemError):
                raise record
            item = parse_candidate(record, root)
        except ItemError as exc:
            yield exc.at(line=line_no)
            continue
        did, image = item.id, item.image
        if item.problem is not None:
            yield ItemError(did, item.problem, line=line_no)
            continue
        meta = {k: v for k, v in record.items() if k not in ("did", "txt", "img_path")}
        fp = item_fingerprint(item, digests=digests)
        kind = _kind(image, item.text)
        yield Entry(did, fp, (lambda it=item: _checked(it, chunker, report)), image, kind, meta)


def _kind(image: Any, text: str | None) -> EntryKind:
    """The kind of a JSONL or M-BEIR line's entry: a text, an image, or an image with its caption."""
    if image is None:
        return EntryKind.TEXT
    return EntryKind.IMAGE if text is None else EntryKind.CAPTIONED_IMAGE
