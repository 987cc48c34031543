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
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        Modality.parse("audio")


def test_video_items_and_their_modalities(tmp_path):
    assert Item(video="clip.mp4").modality is Modality.VIDEO
    assert Item(video="clip.mp4", text="a talk").modality is Modality.VIDEO_TEXT
    assert Modality.parse("text,video") is Modality.VIDEO_TEXT and str(Modality.VIDEO) == "video"
    frames = Item(video=["a.png", Image.new("RGB", (4, 4))], max_frames=8)
    assert isinstance(frames.video, tuple) and frames.modality is Modality.VIDEO
    with pytest.raises(ItemError, match="both a video and an image"):
        Item(video="clip.mp4", image="a.png", id="both").modality
    with pytest.raises(ValueError, match="fps must be a positive number"):
        Item(video="clip.mp4", fps=0)
    with pytest.raises(ValueError, match="max_frames must be a whole number of at least 2"):
        Item(video="clip.mp4", max_frames=1)
    with pytest.raises(ValueError, match="fps applies to a video file"):
        Item(video=["a.png", "b.png"], fps=2)
    with pytest.raises(ValueError, match="apply to a video"):
        Item(text="no video", max_frames=4)
    with pytest.raises(TypeError, match="video must be a path"):
        Item(video=3)
    with pytest.raises(ValueError, match="at least one frame"):
        Item(video=[])
    with pytest.raises(ValueError, match="video_start applies to a video file"):
        Item(video=["a.png", "b.png"], video_start=1)
    with pytest.raises(ValueError, match="video_end must be a number of seconds"):
        Item(video="clip.mp4", video_end=-1)
    with pytest.raises(ValueError, match="must come after video_start"):
        Item(video="clip.mp4", video_start=30, video_end=30)
    span = as_items([Item(video="clip.mp4", video_start=120, video_end=150.5)], is_query=False)[0]
    assert (span.video_start, span.video_end) == (120, 150.5)
    copied = as_items([Item(video="clip.mp4", fps=2.0, max_frames=6, text="t")], is_query=True)[0]
    assert (copied.video, copied.fps, copied.max_frames, copied.text) == ("clip.mp4", 2.0, 6, "t")
    from_dict = as_items([{"video": "clip.mp4", "fps": 0.5}], is_query=False)[0]
    assert (from_dict.video, from_dict.fps) == ("clip.mp4", 0.5)


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
