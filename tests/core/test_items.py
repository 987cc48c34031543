import pytest
from PIL import Image

from umr import Item, ItemError, Modality
from umr.core.items import as_items


def test_modality_follows_content_and_mbeir_spelling():
    img = Image.new("RGB", (4, 4))
    assert Item(text="t").modality is Modality.TEXT
    assert Item(image=img).modality is Modality.IMAGE
    assert Item(text="t", image=img).modality is Modality.FUSED
    assert str(Modality.FUSED) == "image,text"
    assert Modality.parse("text,image") is Modality.FUSED
    with pytest.raises(ItemError, match="neither text nor image"):
        Item(id="e").modality


def test_modality_parse_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        Modality.parse("video")


def test_wrong_field_types_are_refused_with_the_item_named():
    with pytest.raises(TypeError, match="item 'a': text must be a string"):
        Item(text=3, id="a")
    with pytest.raises(TypeError, match="image must be a path"):
        Item(image=3.5, id="b")


def test_as_items_accepts_strings_images_dicts_and_items():
    img = Image.new("RGB", (4, 4))
    items = as_items(["hello", img, {"text": "x", "id": "d"}, Item(text="i", id="keep")],
                     is_query=True, instruction="find")
    assert [it.modality for it in items] == [Modality.TEXT, Modality.IMAGE, Modality.TEXT, Modality.TEXT]
    assert [it.id for it in items] == ["0", "1", "d", "keep"]
    assert all(it.is_query and it.instruction == "find" for it in items)
    with pytest.raises(TypeError, match="item 0"):
        as_items([3], is_query=False)


def test_item_error_locates_line_and_id():
    err = ItemError("x", "broken").at(line=7, index=2)
    assert str(err) == "line 7, item 'x': broken"
    assert err.to_dict() == {"line": 7, "id": "x", "error": "broken"}


@pytest.mark.parametrize("blank", ["", " ", "\n\t "])
def test_a_blank_text_is_no_text(blank):
    img = Image.new("RGB", (4, 4))
    assert Item(text=blank).text is None
    assert Item(text=blank, image=img).modality is Modality.IMAGE
    with pytest.raises(ItemError, match="neither text nor image .an empty or blank text is no text"):
        Item(text=blank, id="e").modality
    assert Item(text=" padded ").text == " padded "  # real text is kept as given
