"""The text-window contract (``text_window``, ``token_spans``) against each family's own tokenisation:
a candidate text of k spans costs the template plus exactly k tokens, and the window is what is
left of the model's limit, so a passage of ``text_window()`` spans is never cut."""

from __future__ import annotations

import pytest

import umr
from umr.core.items import Item

TEXT = "Tides turn twice a day; 42 boats, café crème and 東京 at 07:15.\nThe harbour lighthouse keeps watch. " * 3


def _prefix_of(model, text, k):
    spans = model.token_spans(text)
    return text[: spans[k - 1][1]]


@pytest.mark.parametrize("family", ["gme", "mmembed"])
def test_mllm_window_is_its_limit_less_the_candidate_template(family, tmp_path, tiny_gme_dir):
    if family == "gme":
        model = umr.load_model(tiny_gme_dir)
    else:
        from umr.testing import write_tiny_mmembed

        model = umr.load_model(write_tiny_mmembed(tmp_path / "mm"))
    processor = model.processor
    overhead = processor.max_length - model.text_window()
    assert 0 < overhead < 40
    for k in (1, 7, 30):
        text = _prefix_of(model, TEXT, k)
        assert len(model.token_spans(text)) == k
        assert processor.cost(Item.candidate(text=text)) == overhead + k
    # a passage of exactly the window is embedded whole: nothing is cut at max_length
    processor.max_length = overhead + 30
    assert model.text_window() == 30
    fits = _prefix_of(model, TEXT, 30)
    assert len(processor.prepare(Item.candidate(text=fits)).input_ids) == processor.max_length
    assert processor.cost(Item.candidate(text=_prefix_of(model, TEXT, 31))) == processor.max_length


@pytest.mark.parametrize("family", ["gme", "mmembed"])
def test_mllm_window_beside_an_image_is_what_the_image_leaves(family, tmp_path, tiny_gme_dir):
    """A PDF page's passage holds the page image: a text of exactly ``text_window_beside_image``
    spans is embedded whole beside an image of that size, one span more is cut. GME's image takes
    its tokens from the window; MM-Embed cuts the prompt before splicing the image in."""
    from PIL import Image

    if family == "gme":
        model = umr.load_model(tiny_gme_dir, min_image_tokens=4, max_image_tokens=64)
        model.processor.max_length = 150
    else:
        from umr.testing import write_tiny_mmembed

        model = umr.load_model(write_tiny_mmembed(tmp_path / "mm"))
        model.processor.max_length = 60
    page = Image.new("RGB", (990, 1280), "white")
    room = model.text_window_beside_image(*page.size)
    if family == "gme":
        assert room == model.text_window() - model.processor.num_image_tokens(*page.size) - 2
    else:
        assert 0 < model.text_window() - room <= 3  # the <image> tag and its newline
    long = TEXT * 8
    fits = Item.candidate(text=_prefix_of(model, long, room), image=page)
    over = Item.candidate(text=_prefix_of(model, long, room + 1), image=page)
    processor, limit = model.processor, model.processor.max_length
    cut = [processor.prepare(item).input_ids for item in (fits, over)]
    processor.max_length = 10 ** 6
    whole = [processor.prepare(item).input_ids for item in (fits, over)]
    processor.max_length = limit
    assert cut[0] == whole[0] and cut[1] != whole[1]


def test_clip_window_counts_start_end_and_the_uniir_period(tmp_path):
    from umr.testing import write_tiny_clip

    model = umr.load_model(write_tiny_clip(tmp_path / "clip"))
    assert model.text_window() == model.max_length - 3
    text = _prefix_of(model, "a red double decker bus on a wet street in the rain at night", model.text_window())
    processor = model.processor
    ids = processor.tokenizer([processor.text_of(Item.candidate(text=text))])["input_ids"][0]
    assert len(ids) <= model.max_length


@pytest.mark.slow
def test_text_model_window_is_max_seq_length_less_cls_and_sep():
    from transformers import AutoTokenizer

    model = umr.load_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(str(model.folder))  # the model's own, independently
    assert model.text_window() == 254
    for k in (1, 9, 40):
        text = _prefix_of(model, TEXT, k)
        assert len(tokenizer(text)["input_ids"]) == k + 2


def test_light_text_path_spans_the_whole_text_like_sentence_transformers():
    """The light BERT path truncates what it embeds, never the spans passages are cut from
    (a 20k-character file used to give 2 passages, the second cut silently)."""
    text = " ".join(f"word{i} alpha" for i in range(3000))
    light = umr.load_model("minilm")
    library = umr.load_model("minilm", backend="sentence-transformers")
    assert light.token_spans(text) == library.token_spans(text)
    assert light.token_spans(text)[-1][1] == len(text)
