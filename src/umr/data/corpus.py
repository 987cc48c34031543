"""Corpus readers for ``umr index``: a folder, an items JSONL, or an M-BEIR candidate pool.

Every reader yields :class:`Entry` objects (or :class:`~umr.types.ItemError` for what cannot
even be listed). An entry knows its id and a content fingerprint *before* anything is decoded,
so a re-run can say "unchanged" cheaply; ``entry.load()`` builds the :class:`~umr.types.Item`
and raises ``ItemError`` for a bad file.

Folder rules: images (jpg, jpeg, png, webp, gif, bmp, tif, tiff), text (txt, md), PDF (one item
per page: the rendered page image together with its text layer). An image with a sidecar
``NAME.txt`` (or ``NAME.jpg.txt``) becomes one fused item and the sidecar is not indexed on its
own. Ids are paths relative to the folder (``report.pdf#page=2`` for PDF pages); the index puts
the source's prefix in front (:func:`default_id_prefix`). Paths are stored resolved (absolute),
so results open from any working directory. Fingerprints are :mod:`umr.fingerprint`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..fingerprint import FileDigests, file_digest, item_fingerprint
from ..types import Item, ItemError, Modality

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
TEXT_EXTENSIONS = {".txt", ".md"}
PDF_EXTENSIONS = {".pdf"}
#: larger text files are refused (split them): embedders read a few hundred tokens anyway
MAX_TEXT_BYTES = 1_000_000
#: PDF pages are rendered at this many pixels on the longer side
PDF_RENDER_SIDE = 1280


@dataclass
class Entry:
    """One corpus item before it is loaded."""

    id: str
    fingerprint: str
    loader: Callable[[], Item] = field(repr=False)
    path: str | None = None
    kind: str = "text"
    meta: dict[str, Any] = field(default_factory=dict)
    #: False for ids umr made up (a JSONL line without ``id``): the index qualifies them by file
    explicit_id: bool = True

    def load(self) -> Item:
        item = self.loader()
        item.id = self.id
        return item


def read_corpus(source: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                digests: FileDigests | None = None) -> Iterator[Entry | ItemError]:
    """Entries of a folder, an items JSONL or an M-BEIR pool JSONL (detected from its fields).

    ``digests`` remembers file digests across runs (see :mod:`umr.fingerprint`).
    """
    source = Path(source)
    if source.is_dir():
        yield from read_folder(source, digests=digests)
    elif source.is_file() and source.suffix.lower() == ".jsonl":
        if _is_mbeir_pool(source):
            yield from read_mbeir_pool(source, image_root=image_root, digests=digests)
        else:
            yield from read_jsonl(source, digests=digests)
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
    """How many items a corpus will yield, cheaply (PDF pages counted), or None if unknown."""
    source = Path(source)
    if source.is_dir():
        total = 0
        for path, _ in _walk_folder(source):
            if path.suffix.lower() in PDF_EXTENSIONS:
                total += _pdf_page_count(path) or 1
            else:
                total += 1
        return total
    if source.is_file():
        with source.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    return None


# -- folders ---------------------------------------------------------------------------------------


def _walk_folder(root: Path) -> Iterator[tuple[Path, Path | None]]:
    """(file, sidecar) pairs of indexable files, sorted; sidecars are folded into their image."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = sorted(f for f in files if not f.startswith("."))
        present = set(names)
        sidecars = set()
        for name in names:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                for candidate in (Path(name).stem + ".txt", name + ".txt"):
                    if candidate in present:
                        sidecars.add(candidate)
        for name in names:
            if name in sidecars:
                continue
            path = Path(folder) / name
            ext = path.suffix.lower()
            if ext in IMAGE_EXTENSIONS:
                sidecar = next((Path(folder) / c for c in (path.stem + ".txt", name + ".txt") if c in present), None)
                yield path, sidecar
            elif ext in TEXT_EXTENSIONS or ext in PDF_EXTENSIONS:
                yield path, None


def read_folder(root: str | os.PathLike, *, digests: FileDigests | None = None) -> Iterator[Entry | ItemError]:
    root = Path(root).resolve()
    for path, sidecar in _walk_folder(root):
        rel = path.relative_to(root).as_posix()
        ext = path.suffix.lower()
        meta = {"file": rel, "folder": Path(rel).parent.as_posix(), "ext": ext.lstrip(".")}
        try:
            digest = file_digest(path, digests=digests)
            if sidecar is not None:
                digest = hashlib.blake2b((digest + file_digest(sidecar, digests=digests)).encode(),
                                         digest_size=16).hexdigest()
        except OSError as exc:
            yield ItemError(rel, f"cannot read file: {exc}")
            continue
        if ext in IMAGE_EXTENSIONS:
            yield Entry(rel, digest, _image_loader(path, sidecar, rel), str(path),
                        "image+caption" if sidecar else "image", meta)
        elif ext in TEXT_EXTENSIONS:
            yield Entry(rel, digest, _text_loader(path, rel), str(path), "text", meta)
        else:
            yield from _pdf_entries(path, rel, digest, meta)


def read_text_file(path: Path, item_id: str) -> str:
    """A text file's contents, or ItemError for empty, huge or binary files."""
    size = path.stat().st_size
    if size == 0:
        raise ItemError(item_id, "empty file")
    if size > MAX_TEXT_BYTES:
        raise ItemError(item_id, f"text file too large ({size / 1e6:.1f} MB; the limit is "
                                 f"{MAX_TEXT_BYTES / 1e6:.0f} MB): split it into passages")
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


def _text_loader(path: Path, item_id: str) -> Callable[[], Item]:
    return lambda: Item.candidate(text=read_text_file(path, item_id), id=item_id)


def _image_loader(path: Path, sidecar: Path | None, item_id: str) -> Callable[[], Item]:
    def load() -> Item:
        from ..images import image_size

        image_size(path, item_id=item_id)  # header check: non-images and bombs fail here
        caption = None
        if sidecar is not None:
            try:
                caption = read_text_file(sidecar, item_id)
            except ItemError as exc:
                raise ItemError(item_id, f"sidecar {sidecar.name}: {exc.reason}") from None
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


def _pdf_entries(path: Path, rel: str, digest: str, meta: dict[str, Any]) -> Iterator[Entry | ItemError]:
    try:
        import pypdfium2 as pdfium
    except ImportError:
        yield ItemError(rel, "PDF support needs pypdfium2: pip install 'umr[index]'")
        return
    try:
        doc = pdfium.PdfDocument(str(path))
        pages = len(doc)
        doc.close()
    except Exception as exc:  # noqa: BLE001 - pdfium raises its own error types
        yield ItemError(rel, f"broken PDF: {exc}")
        return
    if pages == 0:
        yield ItemError(rel, "PDF has no pages")
        return
    for number in range(1, pages + 1):
        page_id = f"{rel}#page={number}"
        yield Entry(page_id, f"{digest}:{number}", _pdf_page_loader(path, number, page_id), str(path),
                    "pdf page", {**meta, "page": number})


def _pdf_page_loader(path: Path, number: int, item_id: str) -> Callable[[], Item]:
    def load() -> Item:
        import pypdfium2 as pdfium

        try:
            doc = pdfium.PdfDocument(str(path))
            try:
                page = doc[number - 1]
                width, height = page.get_size()
                scale = PDF_RENDER_SIDE / max(width, height, 1)
                image = page.render(scale=scale).to_pil().convert("RGB")
                text = page.get_textpage().get_text_range().replace("\r\n", "\n").strip()
            finally:
                doc.close()
        except Exception as exc:  # noqa: BLE001
            raise ItemError(item_id, f"PDF page cannot be rendered: {exc}") from None
        return Item.candidate(text=text or None, image=image, id=item_id)

    return load


# -- JSONL -----------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike, *, digests: FileDigests | None = None) -> Iterator[Entry | ItemError]:
    """Items JSONL (the ``umr embed`` fields; other fields become metadata). Ids default to ``line-N``
    (``explicit_id`` False). Image paths are resolved; images are fingerprinted by their bytes.
    """
    from .items import read_items_jsonl

    for line_no, parsed in read_items_jsonl(path):
        if isinstance(parsed, ItemError):
            yield parsed
            continue
        item = parsed
        explicit = item.id is not None
        item_id = item.id if explicit else f"line-{line_no}"
        item.id, item.is_query, item.instruction = item_id, False, None
        image = item.image if isinstance(item.image, str) else None
        kind = "text" if item.image is None else ("image" if item.text is None else "image+caption")
        yield Entry(item_id, item_fingerprint(item, digests=digests), (lambda it=item: _checked(it)), image,
                    kind, dict(item.metadata), explicit_id=explicit)


def _checked(item: Item) -> Item:
    if item.image is not None:
        from ..images import image_size

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
                    digests: FileDigests | None = None) -> Iterator[Entry | ItemError]:
    """An M-BEIR candidate pool (``did``, ``txt``, ``img_path``, ``modality``) as a corpus.

    ``img_path`` is relative to ``image_root`` (default: the nearest folder above the pool that
    holds ``mbeir_images``). Other fields become metadata.
    """
    path = Path(path).resolve()
    root = (Path(image_root).expanduser().resolve() if image_root is not None else _mbeir_image_root(path))
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                did = str(record["did"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                yield ItemError(None, f"not an M-BEIR candidate ({type(exc).__name__}: {exc})", line=line_no)
                continue
            text = record.get("txt") or None
            image = record.get("img_path") or None
            if image is not None:
                image = str(root / image)
            declared = record.get("modality")
            try:
                if declared is not None:
                    declared = Modality.parse(declared).value
            except ValueError as exc:
                yield ItemError(did, str(exc), line=line_no)
                continue
            if declared == "text":
                image = None
            elif declared == "image":
                text = None
            if text is None and image is None:
                yield ItemError(did, "has neither text nor image", line=line_no)
                continue
            meta = {k: v for k, v in record.items() if k not in ("did", "txt", "img_path")}
            item = Item.candidate(text=text, image=image, id=did)
            fp = item_fingerprint(item, digests=digests)
            kind = "text" if image is None else ("image" if text is None else "image+caption")
            yield Entry(did, fp, (lambda it=item: _checked(it)), image, kind, meta)
