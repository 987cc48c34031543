"""Qwen3-VL-Embedding's video path: parity with the reference, decoding, frame lists, budgets, bad files.

Two references:

* the official ``Qwen3VLEmbedder`` itself (QwenLM/Qwen3-VL-Embedding with qwen-vl-utils 0.0.14,
  transformers 4.57.3 and decord), run once on the clips of ``tests/fixtures/video``
  (``make_reference.py``), whose vectors are stored there;
* its video path transcribed literally, one item at a time (:mod:`umr.verify.references.qwen_video`,
  which ``umr verify`` runs too). umr's path (seeking decoder, planner, packed decoder) shares
  none of it.
"""

from __future__ import annotations

import importlib.util
import json
import random
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import umr
from umr.cli import main
from umr.core.items import Item, ItemError
from umr.verify.references.qwen_video import Qwen3VLVideoReference, decode_all

av = pytest.importorskip("av")

TOL = 1e-5
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "video"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_reference", FIXTURES / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_reference = _fixture_module()


# -- fixtures ----------------------------------------------------------------------------------

#: generated clips: (codec, width, height, rate, frames, pixel format, encoder options)
CLIPS = {
    "bframes.mp4": ("libx264", 160, 120, 25, 50, "yuv420p", {"bf": "3", "g": "10"}),
    "vp9.webm": ("libvpx-vp9", 112, 64, 12, 30, "yuv420p", {}),
    "mjpeg.avi": ("mjpeg", 96, 72, 15, 16, "yuvj420p", {}),
    "odd_count.mkv": ("libx264", 100, 60, 10, 27, "yuv420p", {"g": "8"}),
    "ntsc_portrait.mov": ("libx264", 72, 120, Fraction(30000, 1001), 40, "yuv420p", {}),
    "exact_512x288.mp4": ("libx264", 512, 288, 6, 8, "yuv420p", {}),
    "three_frames.mp4": ("libx264", 64, 64, 10, 3, "yuv420p", {}),
    "long.mp4": ("libx264", 64, 48, 8, 160, "yuv420p", {"g": "16"}),
    "vga.mp4": ("libx264", 640, 480, 6, 12, "yuv420p", {}),
    "raw.h264": ("libx264", 64, 48, 10, 12, "yuv420p", {"bf": "2"}),  # no timestamps: decoded in order
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from umr.testing import write_tiny_qwen3vl

    return write_tiny_qwen3vl(tmp_path_factory.mktemp("tiny-qwen3vl-video") / "tiny", seed=0)


@pytest.fixture(scope="module")
def q3(tiny_dir):
    return umr.load_model(tiny_dir)


@pytest.fixture(scope="module")
def ref(tiny_dir):
    return Qwen3VLVideoReference(tiny_dir)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for name, spec in CLIPS.items():
        make_reference.write_clip(folder / name, *spec)
    return {name: folder / name for name in CLIPS}


@pytest.fixture(scope="module")
def frame_lists(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")

    def frames(name, count, width, height, suffix=".png"):
        paths = []
        for i in range(count):
            path = folder / f"{name}-{i:03d}{suffix}"
            Image.fromarray(make_reference.picture(i, width, height)).save(path)
            paths.append(str(path))
        return paths

    return {"five": frames("five", 5, 100, 80), "four": frames("four", 4, 300, 200, ".jpg"),
            "seventy": frames("seventy", 70, 64, 48), "wide": frames("wide", 3, 500, 90),
            "twenty": frames("twenty", 20, 90, 90)}


def _check(model, reference, item: Item, **extra):
    ours = model.embed([item]).vectors[0]
    theirs = reference.embed_item(item, **extra)
    delta = float(np.abs(ours - theirs).max())
    assert delta <= TOL, f"{item.id}: max|delta| = {delta:.2e}"


# -- parity with the official reference (stored vectors) ---------------------------------------

def test_official_reference_vectors(q3, tiny_dir):
    """umr equals the official Qwen3VLEmbedder (decord, qwen-vl-utils 0.0.14, transformers 4.57.3) on
    the stored clips: every container, per-item fps/max_frames, fused, a query, a frame list."""
    stored = np.load(FIXTURES / "reference.npz")
    assert str(stored["model_digest"]) == make_reference.model_digest(tiny_dir), \
        "the tiny checkpoint changed: regenerate tests/fixtures/video/reference.npz (see its README.md)"
    worst = 0.0
    for case_id, inputs in make_reference.CASES:
        video = make_reference.absolute(inputs["video"])
        fields = dict(text=inputs.get("text"), video=tuple(video) if isinstance(video, list) else video,
                      fps=inputs.get("fps"), max_frames=inputs.get("max_frames"), id=case_id)
        item = Item.query(instruction=inputs["instruction"], **fields) if "instruction" in inputs \
            else Item.candidate(**fields)
        worst = max(worst, float(np.abs(q3.embed([item]).vectors[0] - stored[case_id]).max()))
    assert worst <= TOL, worst


# -- parity with the transcribed reference -----------------------------------------------------

@pytest.mark.parametrize("name", [n for n in CLIPS if n not in ("long.mp4", "vga.mp4")])
def test_clip_parity(q3, ref, clips, name):
    _check(q3, ref, Item.candidate(video=clips[name], id=name))


@pytest.mark.parametrize("name, fps, max_frames", [
    ("bframes.mp4", 4, None), ("bframes.mp4", 25, 12), ("vp9.webm", 0.5, None), ("odd_count.mkv", 10, 6),
    ("long.mp4", None, 6), ("long.mp4", None, 5), ("long.mp4", 0.25, None)])
def test_per_item_fps_and_max_frames_parity(q3, ref, clips, name, fps, max_frames):
    _check(q3, ref, Item.candidate(video=clips[name], fps=fps, max_frames=max_frames, id=name))


@pytest.mark.slow
@pytest.mark.parametrize("start, end", [(5, 12.3), (3, None), (None, 9.5), (0, 20)])
def test_time_range_parity(q3, ref, clips, start, end):
    """A segment of a video (``video_start`` / ``video_end``, how ``umr index`` embeds a long video's
    segments) is sampled as qwen-vl-utils samples that range: frames from the first at or after the
    start to the last at or before the end, timestamps in the whole video's time."""
    item = Item(video=clips["long.mp4"], video_start=start, video_end=end, fps=2)
    ours = q3.encode_candidates([item])[0]
    assert np.abs(ours - ref.embed_item(item)).max() <= TOL
    plan = q3.video_plan(item)
    assert plan.seconds[0] >= (start or 0) and plan.seconds[-1] <= (end if end is not None else 20)


def test_a_time_range_without_two_frames_is_an_item_error(q3, clips):
    result = q3.embed([Item(video=clips["long.mp4"], video_start=19.95, id="tail"), Item(text="ok", id="t")],
                      on_error="skip")
    assert list(result.indices) == [1] and "holds no two frames" in result.errors[0].reason


def test_sixty_four_frames_parity(q3, ref, clips):
    """A 20 s clip at fps 8 (160 frames wanted) is capped at 64 frames, 32 frame pairs."""
    item = Item.candidate(video=clips["long.mp4"], fps=8, id="long")
    assert len(q3.video_plan(item).positions) == 64
    _check(q3, ref, item)


def test_model_level_sampling_and_item_override(tiny_dir, clips):
    model = umr.load_model(tiny_dir, fps=2, max_frames=8)
    reference = Qwen3VLVideoReference(tiny_dir, fps=2, max_frames=8)
    _check(model, reference, Item.candidate(video=clips["bframes.mp4"], id="model-level"))
    _check(model, reference, Item.candidate(video=clips["bframes.mp4"], fps=1, max_frames=4, id="item-level"))


@pytest.mark.parametrize("instruction", [None, "Find the clip that shows it", "  Which one?  ", "找到视频"])
def test_fused_and_query_parity(q3, ref, clips, instruction):
    _check(q3, ref, Item.candidate("a square crossing a gradient", video=clips["vp9.webm"], id="fused"))
    _check(q3, ref, Item.query("where does the square go?", video=clips["ntsc_portrait.mov"],
                               instruction=instruction, id="fused-q"))
    _check(q3, ref, Item.query(video=clips["mjpeg.avi"], instruction=instruction, id="video-q"))


@pytest.mark.parametrize("name, text", [("five", None), ("four", "four frames"), ("wide", None)])
def test_frame_list_parity(q3, ref, frame_lists, name, text):
    """Frame lists: resized to multiples of 64 first, an odd count padded, timed at 2 frames per second."""
    _check(q3, ref, Item.candidate(text, video=frame_lists[name], id=name))


@pytest.mark.slow
def test_long_frame_list_is_thinned_as_the_reference(q3, ref, frame_lists):
    item = Item.candidate(video=frame_lists["seventy"], id="seventy")
    plan = q3.video_plan(item)
    assert plan.positions == tuple(np.linspace(0, 69, 64, dtype=int).tolist())
    _check(q3, ref, item)


def test_frame_list_max_frames(tiny_dir, q3, frame_lists):
    """A frame list over max_frames (the model's, or the item's) is thinned as sample_frames thins it."""
    model = umr.load_model(tiny_dir, max_frames=8)
    _check(model, Qwen3VLVideoReference(tiny_dir, max_frames=8), Item.candidate(video=frame_lists["twenty"], id="m8"))
    _check(q3, Qwen3VLVideoReference(tiny_dir, max_frames=6),
           Item.candidate(video=frame_lists["twenty"], max_frames=6, id="i6"))


def test_pil_frames_equal_their_files(q3, frame_lists):
    paths = frame_lists["five"]
    images = [Image.open(p) for p in paths]
    a = q3.embed([Item(video=paths)]).vectors
    b = q3.embed([Item(video=images)]).vectors
    assert np.abs(a - b).max() <= TOL


def test_frames_of_different_sizes_are_an_item_error(q3, frame_lists):
    mixed = [frame_lists["five"][0], frame_lists["four"][0]]
    result = q3.embed([Item(video=mixed, id="mixed"), Item(text="fine")], on_error="skip")
    assert list(result.indices) == [1]
    assert "must resize to one size" in result.errors[0].reason


# -- the prompt, positions, batches ------------------------------------------------------------

def test_prompt_timestamps_and_tokens(q3, ref, clips):
    """One ``<t seconds>`` block per frame pair (the pair's mean time, .1f), ids equal the reference's."""
    item = Item.candidate("after", video=clips["bframes.mp4"], fps=2, id="b")
    encoded, _, grid, stamps = ref.inputs(text="after", video=str(clips["bframes.mp4"]), fps=2)
    ours = q3.prepare(item)
    assert ours.input_ids == encoded["input_ids"][0].tolist()
    assert ours.video_grids == [tuple(grid)] and grid[0] == 2
    # frames linspace(0, 49, 4).round() = 0, 16, 33, 49 at 25 fps: pairs at 0.32 and 1.64 s
    assert stamps == pytest.approx([0.32, 1.64])
    text = q3.processor.tokenizer.decode(ours.input_ids)
    assert "<0.3 seconds><|vision_start|>" in text and "<1.6 seconds><|vision_start|>" in text


def test_each_frame_pair_is_positioned_like_an_image(q3, clips):
    p = q3.prepare(Item.candidate("after", video=clips["bframes.mp4"], fps=2))
    positions = q3._rope_positions(p)[:, 0]
    _, gh, gw = p.video_grids[0]
    pads = [i for i, t in enumerate(p.input_ids) if t == q3.video_token_id]
    per_patch = gh * gw // 4
    for first in (pads[0], pads[per_patch]):
        start = int(positions[0, first])
        assert positions[:, first].tolist() == [start, start, start]
        last = first + per_patch - 1
        assert positions[:, last].tolist() == [start, start + gh // 2 - 1, start + gw // 2 - 1]
        assert positions[0, last + 1] == start + max(gh, gw) // 2  # <|vision_end|> resumes as after an image


def test_batch_invariance_with_text_and_images(q3, clips, frame_lists, tmp_path):
    image = tmp_path / "still.png"
    Image.fromarray(make_reference.picture(7, 120, 90)).save(image)
    items = [Item.candidate("A dog running on the beach.", id="t"), Item.candidate(image=image, id="i"),
             Item.candidate(video=clips["vp9.webm"], id="v1"),
             Item.query("find the red car", image=image, instruction="Find a matching image", id="f"),
             Item.query("square", video=clips["mjpeg.avi"], instruction="Find the clip", id="v2"),
             Item.candidate(video=frame_lists["five"], id="v3"), Item.candidate("x", id="t2"),
             Item.candidate(video=clips["three_frames.mp4"], fps=3, id="v4")]
    alone = np.stack([q3.embed([item]).vectors[0] for item in items])
    rng = random.Random(0)
    worst = 0.0
    for batch_size in (2, 3, 8):
        order = list(range(len(items)))
        rng.shuffle(order)
        result = q3.embed([items[i] for i in order], batch_size=batch_size)
        worst = max(worst, float(np.abs(result.vectors - alone[order]).max()))
    assert worst <= TOL, worst
    processed = [q3.prepare(item) for item in items]
    packed = torch.nn.functional.normalize(q3.forward(processed, packed=True), dim=-1)
    plain = torch.nn.functional.normalize(q3.forward(processed, packed=False), dim=-1)
    assert float((packed - plain).abs().max()) <= TOL  # umr's packed decoder = transformers' forward


def test_cost_is_the_real_sequence_length(q3, clips, frame_lists):
    for item in (Item.candidate("words", video=clips["odd_count.mkv"]), Item.candidate(video=frame_lists["five"])):
        assert q3._cost(item) == len(q3.prepare(item).input_ids)


# -- decoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CLIPS))
def test_reading_sampled_frames_equals_decoding_everything(clips, name):
    from umr.core.video import probe_video, read_frames

    everything, fps = decode_all(clips[name])
    info = probe_video(clips[name])
    assert (info.frames, info.fps, info.height, info.width) == (len(everything), fps, *everything.shape[1:3])
    rng = random.Random(len(name))
    for indices in ([0], [info.frames - 1], sorted(rng.sample(range(info.frames), min(5, info.frames))),
                    [info.frames - 1, 0, 1, 1], list(range(info.frames))):
        assert np.array_equal(read_frames(clips[name], indices, info=info), everything[indices]), indices


def test_seeking_reads_without_decoding_from_the_start(clips, monkeypatch):
    """Every generated container has timestamps and key frames: frames are found by seeking, and only
    the wanted ones are converted to RGB. A raw H.264 stream has no timestamps: decoded in order."""
    from umr.core import video

    assert video.probe_video(clips["raw.h264"]).pts is None
    monkeypatch.setattr(video, "_decode_in_order", lambda *a, **k: pytest.fail("fell back to decoding in order"))
    converted = []
    to_rgb = video._rgb
    monkeypatch.setattr(video, "_rgb", lambda frame, info: converted.append(frame.pts) or to_rgb(frame, info))
    for name in [n for n in CLIPS if n != "raw.h264"]:
        info = video.probe_video(clips[name])
        wanted = sorted({0, info.frames // 2, info.frames - 1})
        converted.clear()
        assert len(video.read_frames(clips[name], wanted, info=info)) == len(wanted)
        assert len(converted) == len(wanted), name


def test_video_bytes_equal_the_file(q3, clips):
    path = clips["vp9.webm"]
    a = q3.embed([Item(video=path)]).vectors
    b = q3.embed([Item(video=path.read_bytes())]).vectors
    assert np.abs(a - b).max() <= TOL


def _rotated(source: Path, target: Path, matrix) -> Path:
    """``source`` (an mp4) with its track header's display matrix set to ``matrix`` (a, b, c, d)."""
    data = bytearray(source.read_bytes())
    at = data.find(b"tkhd")
    assert data[at + 4] == 0  # version 0: the matrix sits 40 bytes after the box type
    a, b, c, d = matrix
    data[at + 44: at + 80] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 0x40000000)
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("matrix, turns", [((0, 0x10000, -0x10000, 0), 3), ((0, -0x10000, 0x10000, 0), 1),
                                           ((-0x10000, 0, 0, -0x10000), 2)])
def test_rotated_videos_are_upright(clips, tmp_path, matrix, turns):
    """A display rotation (phone videos) turns the frames upright, as decord turns them."""
    from umr.core.video import probe_video, read_frames

    rotated = _rotated(clips["bframes.mp4"], tmp_path / "rotated.mp4", matrix)
    everything, _ = decode_all(clips["bframes.mp4"])
    info = probe_video(rotated)
    assert info.quarter_turns == turns
    assert (info.width, info.height) == ((120, 160) if turns % 2 else (160, 120))
    assert np.array_equal(read_frames(rotated, [3, 20], info=info), np.rot90(everything[[3, 20]], turns, axes=(1, 2)))


# -- bad files are item errors -------------------------------------------------------------------

def test_bad_videos_are_item_errors(q3, clips, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clips["bframes.mp4"].read_bytes()[:3000])
    noise = tmp_path / "noise.mkv"
    noise.write_bytes(np.random.RandomState(0).bytes(5000))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    still = tmp_path / "still.png"  # FFmpeg opens an image as a one-frame video
    Image.fromarray(make_reference.picture(1, 64, 64)).save(still)
    cut = tmp_path / "cut.webm"  # the header survives, the frames do not
    cut.write_bytes(clips["vp9.webm"].read_bytes()[:700])
    items = [Item(video=empty, id="empty"), Item(video=truncated, id="truncated"), Item(video=noise, id="noise"),
             Item(video=text, id="text"), Item(video=tmp_path / "missing.mp4", id="missing"),
             Item(video=tmp_path, id="folder"), Item(video=still, id="still"), Item(video=b"", id="no-bytes"),
             Item(video=cut, id="cut"), Item("fine", video=clips["mjpeg.avi"], id="ok"), Item(text="words", id="t")]
    result = q3.embed(items, on_error="skip")
    assert [items[i].id for i in result.indices] == ["ok", "t"]
    reasons = {e.item_id: e.reason for e in result.errors}
    assert set(reasons) == {"empty", "truncated", "noise", "text", "missing", "folder", "still", "no-bytes", "cut"}
    assert "empty file (0 bytes)" in reasons["empty"] and "empty video (0 bytes)" in reasons["no-bytes"]
    assert "not found" in reasons["missing"] and "is a folder" in reasons["folder"]
    assert "at least 2 are needed" in reasons["still"]
    for name in ("truncated", "noise", "text", "cut"):
        assert "video" in reasons[name] and str(tmp_path) in reasons[name], reasons[name]
    assert np.abs(result.vectors[1] - q3.embed([Item(text="words")]).vectors[0]).max() <= TOL


def test_without_pyav_video_items_are_errors_and_the_rest_embeds(q3, clips, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)
    from umr.core.video import _probe_file

    _probe_file.cache_clear()
    result = q3.embed([Item(video=clips["vp9.webm"], id="v"), Item(text="words", id="t")], on_error="skip")
    _probe_file.cache_clear()
    assert list(result.indices) == [1]
    assert "pip install 'umr[video]'" in result.errors[0].reason and result.errors[0].item_id == "v"


# -- the token budget ----------------------------------------------------------------------------

def _video_tokens(model, item):
    return model.prepare(item).input_ids.count(model.video_token_id)


def test_budget_shrinks_frames_first_and_keeps_the_reference_pipeline(tiny_dir, q3, clips):
    """Over max_length the reference fails; umr keeps the frames and makes them smaller, which is
    the reference's own pipeline at that frame size."""
    item = Item.candidate("what happens", video=clips["vga.mp4"], id="vga")  # 4 frames of 300 tokens
    full = q3.video_plan(item)
    length = len(q3.prepare(item).input_ids)
    max_length = length - 40
    reference = Qwen3VLVideoReference(tiny_dir, max_length=max_length)
    with pytest.raises(ValueError, match="Mismatch in `video` token count"):
        reference.embed_item(item)
    small = umr.load_model(tiny_dir, max_length=max_length)
    plan = small.video_plan(item)
    assert plan.positions == full.positions and plan.height * plan.width < full.height * full.width
    prepared = small.prepare(item)
    assert len(prepared.input_ids) <= max_length and prepared.input_ids[-1] != small.video_token_id
    _check(small, reference, item, resized_height=plan.height, resized_width=plan.width)


def test_budget_then_samples_fewer_frames(tiny_dir, q3, clips):
    """Frames already at the smallest size (upscaled to 128 tokens' worth): fewer of them."""
    item = Item.candidate(video=clips["long.mp4"], id="long")  # 20 frames of 140 tokens
    full = q3.video_plan(item)
    assert len(full.positions) == 20
    small = umr.load_model(tiny_dir, max_length=700)
    plan = small.video_plan(item)
    assert 2 <= len(plan.positions) < 20 and (plan.height, plan.width) == (full.height, full.width)
    assert len(small.prepare(item).input_ids) <= 700
    # the reference itself, asked for that many frames at that size
    _check(small, Qwen3VLVideoReference(tiny_dir, max_length=700), item, max_frames=len(plan.positions),
           resized_height=plan.height, resized_width=plan.width)
    assert plan.positions == tuple(torch.linspace(0, 159, len(plan.positions)).round().long().tolist())


def test_max_video_tokens_caps_each_item(tiny_dir, q3, clips, frame_lists):
    capped = umr.load_model(tiny_dir, max_video_tokens=300)
    for item in (Item(video=clips["bframes.mp4"], fps=4), Item(video=frame_lists["five"])):
        assert _video_tokens(q3, item) > 300 >= _video_tokens(capped, item)
    fits = Item(video=clips["three_frames.mp4"])  # one frame pair of 144 tokens: left as it is
    assert np.abs(capped.embed([fits]).vectors - q3.embed([fits]).vectors).max() <= TOL
    assert capped.identity.options["max_video_tokens"] == 300 and "max_video_tokens" not in q3.identity.options
    assert capped.identity.key() != q3.identity.key()


def test_a_video_that_cannot_fit_is_an_item_error(tiny_dir, clips):
    tight = umr.load_model(tiny_dir, max_length=120)
    result = tight.embed([Item(video=clips["vp9.webm"], id="v"), Item(text="ok", id="t")], on_error="skip")
    assert list(result.indices) == [1]
    assert "does not fit even as 2 frames" in result.errors[0].reason and "max_length=120" in result.errors[0].reason


# -- other families, the index, the command line ------------------------------------------------

def test_families_that_cannot_see_video_refuse_it(clips, tmp_path):
    from umr.rerank import load_reranker
    from umr.testing import write_tiny_cross_encoder

    minilm = umr.load_model("minilm")
    result = minilm.embed([Item(video=clips["vp9.webm"], id="v"), Item(text="ok", id="t")], on_error="skip")
    assert list(result.indices) == [1] and "cannot embed video" in result.errors[0].reason
    reranker = load_reranker(write_tiny_cross_encoder(tmp_path / "ce"))
    scored = reranker.score_pairs(reranker.make_pairs("a query", [Item(video=clips["vp9.webm"], id="v"), "text"]),
                                  on_error="skip")
    assert len(scored.errors) == 1 and "cannot score video" in scored.errors[0].reason


def test_an_index_over_a_model_blind_to_video_refuses_video_items(tmp_path, clips):
    """Video items enter an index as time segments (tests/index/test_video_segments.py); under a
    model that cannot see video each is an item error and the rest is indexed."""
    from umr.data.corpus import read_jsonl
    from umr.index.index import Index

    with Index.create(tmp_path / "idx", umr.load_model("minilm")) as index:
        summary = index.add([Item(video=clips["vp9.webm"], id="v"), Item(text="kept", id="t")])
    assert summary.added == 1 and [e["id"] for e in summary.errors] == ["v"]
    assert "minilm cannot embed video" in summary.errors[0]["error"]
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text(json.dumps({"id": "v", "video": str(clips["vp9.webm"])}) + "\n")
    (entry,) = list(read_jsonl(jsonl))  # no segmenter: no model that sees video
    assert isinstance(entry, ItemError) and entry.line == 1 and "need a model that sees video" in entry.reason


def test_jsonl_video_fields(tmp_path, clips):
    from umr.data.items import read_items_jsonl

    (tmp_path / "clip.webm").write_bytes(clips["vp9.webm"].read_bytes())
    lines = [{"id": "a", "video": "clip.webm", "fps": 2, "max_frames": 6, "topic": "x"},
             {"id": "b", "video": ["f0.png", "f1.png"], "text": "two frames"},
             {"id": "c", "video": 3}, {"id": "d", "video": "https://example.com/v.mp4"},
             {"id": "e", "video": "clip.webm", "fps": -1}, {"id": "f", "video": ["f0.png"], "fps": 2},
             {"id": "g", "video": "clip.webm", "max_frames": 2.5}, {"id": "h", "video": []}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    parsed = dict((line, item) for line, item in read_items_jsonl(tmp_path / "items.jsonl"))
    a, b = parsed[1], parsed[2]
    assert (a.video, a.fps, a.max_frames, a.metadata) == (str(tmp_path / "clip.webm"), 2, 6, {"topic": "x"})
    assert b.video == (str(tmp_path / "f0.png"), str(tmp_path / "f1.png")) and b.text == "two frames"
    errors = {line: item for line, item in parsed.items() if isinstance(item, ItemError)}
    assert sorted(errors) == [3, 4, 5, 6, 7, 8]
    assert "field 'video' must be a path" in errors[3].reason and "URL" in errors[4].reason.upper()
    assert "fps must be a positive number" in errors[5].reason and "fps applies to a video file" in errors[6].reason
    assert "max_frames must be a whole number" in errors[7].reason and errors[8].item_id == "h"


def test_cli_embed_video_jsonl(tmp_path, capsys, tiny_dir, q3, clips, frame_lists):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    lines = [{"id": "a", "video": str(clips["mjpeg.avi"]), "fps": 3},
             {"id": "b", "video": frame_lists["five"], "text": "five frames", "is_query": True,
              "instruction": "Find the clip"},
             {"id": "c", "video": str(bad)}, {"id": "d", "text": "just text"}]
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "o.npy"
    assert main(["embed", "--model", str(tiny_dir), "--input", str(items), "--output", str(out),
                 "--on-error", "skip", "--no-progress"]) == 0
    expected = q3.embed([Item(video=clips["mjpeg.avi"], fps=3),
                         Item.query("five frames", video=frame_lists["five"], instruction="Find the clip"),
                         Item(text="just text")]).vectors
    assert np.abs(np.load(out) - expected).max() <= TOL
    errors = [json.loads(line) for line in (tmp_path / "o.errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(3, "c")] and str(bad) in errors[0]["error"]
    assert "1 item(s) skipped" in capsys.readouterr().out
    assert main(["embed", "--model", "minilm", "--input", str(items), "--output", str(out),
                 "--max-video-tokens", "100"]) == 2
    assert "--max-video-tokens" in capsys.readouterr().err


def test_video_options_are_checked(tiny_dir):
    for options, words in (({"fps": 0}, "fps must be a positive"), ({"max_frames": 1}, "max_frames must be"),
                           ({"max_video_tokens": 0}, "max_video_tokens must be at least 1")):
        with pytest.raises(ValueError, match=words):
            umr.load_model(tiny_dir, **options)
