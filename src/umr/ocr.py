"""Reading the words in an image (OCR), so text-only models can index scans and screenshots.

A text embedder cannot see pixels; under such a model an image is represented by the words
RapidOCR finds in it (its ONNX models ship inside the ``rapidocr_onnxruntime`` wheel, so this
works offline). Photos without legible text get no representation and are reported as such.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from .core.images import load_image
from .core.items import ImageSource, ItemError

#: OCR lines below this recognition confidence are dropped as noise
MIN_SCORE = 0.6
#: fewer letters than this in total means "no readable text"
MIN_LETTERS = 4
#: images are shrunk to at most this many pixels on the longer side before OCR
MAX_SIDE = 2400
#: smaller images are enlarged to this many pixels on the longer side (at most 3x) before OCR
MIN_SIDE = 1800

_engine = None
_lock = threading.Lock()


class OcrUnavailable(RuntimeError):
    pass


def _get_engine():
    global _engine
    with _lock:
        if _engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError:
                raise OcrUnavailable(
                    "OCR needs rapidocr_onnxruntime: pip install 'umr[index]'") from None
            import logging

            _engine = RapidOCR()
            logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        return _engine


def _recognise(engine, img: Image.Image):
    """RapidOCR's boxes for ``img``, read at a size its recogniser handles well."""
    side = max(img.size)
    if side > MAX_SIDE:
        img = img.copy()
        img.thumbnail((MAX_SIDE, MAX_SIDE))
    elif side < MIN_SIDE:
        # the recogniser drops the spaces between small words: read small images enlarged
        factor = min(MIN_SIDE / side, 3.0)
        img = img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))),
                         Image.BICUBIC)
    array = np.asarray(img)[:, :, ::-1].copy()  # RapidOCR expects OpenCV's BGR order
    result, _ = engine(array)
    return result


def read_text(image: ImageSource, *, item_id: str | None = None, min_score: float = MIN_SCORE) -> str:
    """The text in ``image``, one line per detected text line, in reading order; "" if none.

    Raises :class:`~umr.core.items.ItemError` when the image cannot be decoded (it goes through the
    same safe loader as the models, so decompression bombs are refused before decoding) or the
    OCR engine fails on it.
    """
    img = load_image(image, item_id=item_id)
    engine = _get_engine()
    try:
        result = _recognise(engine, img)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the OCR of one image failing is that image's error
        raise ItemError.from_exception(item_id, exc, context="OCR failed") from None
    if not result:
        return ""
    boxes = []
    for box, text, score in result:
        if float(score) >= min_score and text.strip():
            ys = [p[1] for p in box]
            boxes.append(((min(ys) + max(ys)) / 2, max(ys) - min(ys), min(p[0] for p in box), text.strip()))
    # group boxes into visual lines (centres within half a box height), each read left to right
    boxes.sort()
    rows: list[list[tuple]] = []
    for box in boxes:
        if rows and abs(box[0] - rows[-1][0][0]) <= 0.5 * max(box[1], rows[-1][0][1]):
            rows[-1].append(box)
        else:
            rows.append([box])
    lines = [(0, 0, " ".join(b[3] for b in sorted(row, key=lambda b: b[2]))) for row in rows]
    text = "\n".join(t for _, _, t in lines)
    if sum(ch.isalpha() for ch in text) < MIN_LETTERS:
        return ""
    return text
