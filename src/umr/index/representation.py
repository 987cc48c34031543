"""How an item is shown to the index's model: as it is to a model that sees pixels; as words
(its caption, a PDF page's text layer, OCR) to a text-only one."""

from __future__ import annotations

from .. import ocr
from ..core.entries import EntryKind
from ..core.items import Item


class Unrepresentable(Exception):
    """The item has nothing the chosen model can embed (e.g. a photo under a text model)."""

    def __init__(self, item_id: str, reason: str):
        self.item_id, self.reason = item_id, reason
        super().__init__(f"item {item_id!r}: {reason}")


def represent(item: Item, *, sees_images: bool, use_ocr: bool, model_name: str, image_alone: bool = False) -> Item:
    """The item as a model that does (or does not) ``sees_images`` embeds it, with
    ``metadata["via"]`` saying how; an image with no words under a text-only model raises
    :class:`Unrepresentable`. ``image_alone``: a candidate's image is embedded without its text (a
    late-interaction model embeds a page image alone; issue 24)."""
    if item.video is not None:  # only models that see video get video items (umr.data.video_segments)
        item.metadata = {**item.metadata, "via": "frames" if item.text is None else "frames+text"}
        return item
    if item.image is None:
        item.metadata = {**item.metadata, "via": "text"}
        return item
    if sees_images and image_alone and item.text is not None and not item.is_query:
        item = Item(image=item.image, instruction=item.instruction, is_query=item.is_query, id=item.id,
                    metadata=item.metadata)
    if sees_images:
        via = "pixels" if item.text is None else "pixels+text"
        item.metadata = {**item.metadata, "via": via}
        return item
    is_page = item.metadata.get("kind") == EntryKind.PDF_PAGE
    parts, via = [], []
    if item.text:
        parts.append(item.text)
        via.append("text layer" if is_page else "caption")
    if use_ocr and not (item.text and is_page):
        words = ocr.read_text(item.image, item_id=item.id)
        if words:
            parts.append(words)
            via.append("ocr")
    if not parts:
        how = "OCR found no words in it" if use_ocr else "OCR is off"
        raise Unrepresentable(item.id, f"no usable representation under {model_name}: a text-only "
                                       f"model cannot see pixels, {how}, and it has no caption "
                                       f"(add NAME.txt, or index with an MLLM such as gme-2b)")
    return Item(text="\n".join(parts), image=None, instruction=item.instruction,
                is_query=item.is_query, id=item.id, metadata={**item.metadata, "via": "+".join(via)})
