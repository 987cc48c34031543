"""``umr index`` over a folder with video files: each file as time segments (issue 25, item 3).

A generated 5-minute clip (64x48, 2 frames per second, a different colour every 30 s) and a tiny
random Qwen3-VL: ids, times and counts are checked structurally; a segment's own vector finds that
segment (the tiny model's vectors mean nothing, but equal inputs give equal vectors).
"""

from __future__ import annotations

import json
import re

import pytest

import umr
from umr.cli import main
from umr.core.items import Item
from umr.data.video_segments import (SegmentError, VideoSegmenter, format_span, segment_id, segment_times,
                                      stale_segments)
from umr.index import Index
from umr.models.qwen3vl.modeling_qwen3vl import embedding_messages
from umr.models.qwen3vl.video_sampling import FileSampler
from umr.testing import write_test_clip

pytest.importorskip("av")

RATE, MINUTES = 2, 5
#: a small sampling for the tiny model: 30 s segments get 6 frames, 10 s clips 4
SAMPLING = {"fps": 0.25, "max_frames": 8}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from umr.testing import write_tiny_qwen3vl

    return write_tiny_qwen3vl(tmp_path_factory.mktemp("tiny-qwen3vl-segments") / "tiny", seed=0)


@pytest.fixture(scope="module")
def q3(tiny_dir):
    return umr.load_model(tiny_dir, **SAMPLING)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "clips"
    folder.mkdir()
    write_test_clip(folder / "talk.mp4", MINUTES * 60, rate=RATE)
    write_test_clip(folder / "short.mp4", 10, rate=RATE)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "corrupt.mov").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (folder / "notes.txt").write_text("the keynote starts with a demo")
    return folder


# -- cutting ---------------------------------------------------------------------------------------

def test_segment_times_ids_and_spans():
    assert segment_times(300, 30) == [(30.0 * i, 30.0 * i + 30) for i in range(10)]
    assert segment_times(300, 30, 10)[:3] == [(0, 30), (20, 50), (40, 70)]
    assert segment_times(300, 30, 10)[-1] == (280, 300)
    assert segment_times(10, 30) == [(0.0, 10)]  # shorter than a segment: one item
    assert segment_times(60.4, 30) == [(0, 30), (30, 60.4)]  # a 0.4 s tail joins the segment before it
    assert segment_times(3 * 3600 + 0.5, 64)[-1][1] == 10800.5  # no drift over hours
    assert segment_id("clips/talk.mp4", 120.0, 150.0) == "clips/talk.mp4#t=120,150"
    assert segment_id("a.webm", 0, 27.25) == "a.webm#t=0,27.25"
    assert format_span(120, 150) == "2:00-2:30" and format_span(3723.5, 3730) == "1:02:03.5-1:02:10"
    stored = ["c/a.mp4#t=0,30", "c/a.mp4#t=30,60", "c/b.mp4", "c/c.mp4#t=0,30", "c/d.mp4#t=0,30", "notes.txt"]
    seen = {"c/a.mp4#t=0,60", "c/b.mp4#t=0,30", "c/c.mp4", "notes.txt"}  # d.mp4 not read: left to --prune
    assert stale_segments(stored, seen) == ["c/a.mp4#t=0,30", "c/a.mp4#t=30,60", "c/b.mp4", "c/c.mp4#t=0,30"]
    with pytest.raises(SegmentError, match="overlap"):
        VideoSegmenter(None, seconds=30, overlap=30)
    with pytest.raises(SegmentError, match="positive"):
        VideoSegmenter(None, seconds=0)


# -- indexing ----------------------------------------------------------------------------------------

def test_a_folder_of_videos_indexes_into_segments(tmp_path, q3, clips):
    with Index.create(tmp_path / "idx", q3) as index:
        summary = index.index_corpus(clips, segment_seconds=30)
        segments = sorted((r["id"] for r in index.store.records() if "#t=" in r["id"]),
                          key=lambda i: float(i.split("=")[1].split(",")[0]))
        assert segments == [f"clips/talk.mp4#t={30 * i},{30 * i + 30}" for i in range(10)]
        (short,) = index.get(["clips/short.mp4"])
        assert (short["modality"], short["meta"]["start"], short["meta"]["end"]) == ("video", 0.0, 10.0)
        record = index.get(["clips/talk.mp4#t=120,150"])[0]
        assert (record["meta"]["start"], record["meta"]["end"], record["via"]) == (120.0, 150.0, "frames")
        assert record["path"] == str(clips / "talk.mp4")
        # 10 segments + the short clip + the text; the empty and the corrupt file are errors with reasons
        assert (summary.added, len(index)) == (12, 12)
        errors = {e["id"]: e["error"] for e in summary.errors}
        assert set(errors) == {"clips/empty.mp4", "clips/corrupt.mov"}
        assert "empty file" in errors["clips/empty.mp4"] and "video" in errors["clips/corrupt.mov"]

        # the vector of one segment, embedded on its own, finds that segment, with its times
        query = q3.encode_candidates([Item(video=clips / "talk.mp4", video_start=120, video_end=150)])
        top = index.search_vectors(query, k=3)[0][0]
        assert (top.id, top.start, top.end) == ("clips/talk.mp4#t=120,150", 120.0, 150.0)
        assert top.score == pytest.approx(1.0, abs=1e-5)
        assert top.to_dict()["start"] == 120.0 and top.to_dict()["end"] == 150.0
        # a text query returns segments with their times too
        hits = index.search("a demo on stage", k=12, modality="video")
        assert len(hits) == 11 and all(h.start is not None and h.end > h.start for h in hits)
        # a video query through the Python API: the short clip finds itself first
        (best,) = index.search(video=clips / "short.mp4", k=1)
        assert (best.id, best.start, best.end) == ("clips/short.mp4", 0.0, 10.0)

        # a second run finds everything unchanged; the settings were recorded
        again = index.index_corpus(clips)
        assert (again.added, again.unchanged) == (0, 12)
        assert index.config["video_segments"] == {"seconds": 30.0, "overlap": 0.0}
        # cut differently: the old segments go, as a re-split text's old passages do
        recut = index.index_corpus(clips, segment_seconds=60)
        assert (recut.added, recut.deleted) == (5, 10)
        assert len([i for i in index.ids() if i.startswith("clips/talk.mp4#t=")]) == 5


def test_default_segments_fit_the_model_budget_unshrunk(tmp_path, tiny_dir, clips):
    """Without --segment-seconds a segment is the longest stretch the model embeds at its sampling
    within max_length: every segment's sequence fits and none had its frames shrunk or thinned."""
    model = umr.load_model(tiny_dir, max_length=600, **SAMPLING)
    window = model.video_seconds(64, 48)
    assert window == 24.0  # at 0.25 frames per second, 8 frames (32 s) pass 600 tokens, 6 fit
    assert umr.load_model(tiny_dir, **SAMPLING).video_seconds(64, 48) == 32.0  # max_frames / fps
    with Index.create(tmp_path / "idx", model) as index:
        index.index_corpus(clips)
        records = [r for r in index.store.records() if r["id"].startswith("clips/talk.mp4#t=")]
    assert len(records) == len(segment_times(MINUTES * 60, window))
    for record in records:
        item = Item(video=clips / "talk.mp4", video_start=record["meta"]["start"], video_end=record["meta"]["end"])
        plan = model.video_plan(item)
        sampler = FileSampler(model.processor, item.video, 0.25, 8, None, item.video_start, item.video_end)
        assert plan == sampler.plan(sampler.reference_count, None)  # the reference's plan, not a lowered one
        assert model.processor.count_tokens(embedding_messages(item), videos=[plan]) <= 600  # uncut


def test_models_that_cannot_see_video_make_each_video_an_error(tmp_path, clips):
    with Index.create(tmp_path / "idx", umr.load_model("minilm")) as index:
        summary = index.index_corpus(clips)
        assert index.ids() == ["clips/notes.txt"]
    errors = {e["id"]: e["error"] for e in summary.errors}
    assert "cannot embed video" in errors["clips/talk.mp4"] and "cannot embed video" in errors["clips/short.mp4"]


# -- the command line -------------------------------------------------------------------------------

def test_cli_index_and_search_print_times(tmp_path, tiny_dir, clips, capsys):
    model = ["--model", str(tiny_dir), "--max-video-tokens", "1000"]  # fewer frames: a quick test
    assert main(["index", str(clips), "--index", str(tmp_path / "idx"), *model, "--segment-seconds", "60",
                 "--segment-overlap", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 error(s)" in out and "clips/empty.mp4" in out
    assert main(["search", "--index", str(tmp_path / "idx"), "a demo", "-k", "20", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    spans = sorted((r["start"], r["end"]) for r in results if r["id"].startswith("clips/talk.mp4#t="))
    assert spans == [(0, 60), (50, 110), (100, 160), (150, 210), (200, 260), (250, 300)]
    assert main(["search", "--index", str(tmp_path / "idx"), "a demo", "-k", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(re.search(r"clips/talk\.mp4#t=100,160 .*1:40-2:40$", line) for line in lines)
    assert main(["index", str(clips), "--index", str(tmp_path / "idx"), "--segment-seconds", "10",
                 "--segment-overlap", "10", "--no-progress"]) == 2
    assert "overlap must be" in capsys.readouterr().err


# -- video items: Index.add and an items JSONL ------------------------------------------------------

def test_index_add_cuts_video_items_into_segments(tmp_path, q3, clips):
    """A video file given as an item is cut as a folder's video is (the model's window here: 32 s
    at the tiny sampling), under the item's id, with its text beside every segment; a time range
    or a list of frames is one item; a bad file is that item's error and the rest go on."""
    from PIL import Image

    frames = []
    for i in range(3):
        frames.append(tmp_path / f"f{i}.png")
        Image.new("RGB", (64, 48), (80 * i, 20, 200)).save(frames[-1])
    items = [Item(video=clips / "talk.mp4", text="the keynote", id="talk", metadata={"topic": "keynote"}),
             Item(video=str(clips / "short.mp4"), id="short"),
             Item(video=clips / "talk.mp4", video_start=100, video_end=130, id="talk-part"),
             Item(video=[str(f) for f in frames], id="frames"),
             Item(video=clips / "empty.mp4", id="empty"), Item(text="a note", id="note")]
    with Index.create(tmp_path / "idx", q3) as index:
        summary = index.add(items)
        times = segment_times(MINUTES * 60, 32.0)
        assert len(times) == 10
        ids = {f"talk#t={int(a)},{int(b)}" for a, b in times} | {"short", "talk-part", "frames", "note"}
        assert set(index.ids()) == ids and summary.added == len(ids)
        assert [(e["id"], "empty file" in e["error"]) for e in summary.errors] == [("empty", True)]
        record = index.get(["talk#t=96,128"])[0]
        assert (record["modality"], record["path"], record["meta"]["start"], record["meta"]["end"],
                record["meta"]["topic"]) == ("video,text", str(clips / "talk.mp4"), 96.0, 128.0, "keynote")
        assert [(r["meta"]["start"], r["meta"]["end"]) for r in index.get(["short", "talk-part"])] == \
            [(0.0, 10.0), (100, 130)]
        assert index.get(["frames"])[0]["path"] is None  # no file to play

        # each stored vector is the segment's own: its text beside that time range
        segment = Item(text="the keynote", video=clips / "talk.mp4", video_start=96.0, video_end=128.0)
        top = index.search_vectors(q3.encode_candidates([segment]), k=1)[0][0]
        assert (top.id, top.start, top.end) == ("talk#t=96,128", 96.0, 128.0)
        assert top.score == pytest.approx(1.0, abs=1e-5)
        frames_top = index.search_vectors(q3.encode_candidates([Item(video=[str(f) for f in frames])]), k=1)[0][0]
        assert (frames_top.id, frames_top.start) == ("frames", None)

        # the same items again: unchanged, nothing embedded
        again = index.add(items[:4])
        assert (again.added, again.unchanged) == (0, len(ids) - 1)


def test_cli_index_reads_video_lines_of_an_items_jsonl(tmp_path, tiny_dir, clips, capsys):
    lines = [{"id": "talk", "video": str(clips / "talk.mp4"), "fps": 0.1, "max_frames": 4, "speaker": "ada"},
             {"video": "clips/short.mp4", "text": "a short clip"},
             {"id": "bad", "video": str(clips / "corrupt.mov")}, {"id": "doc", "text": "the keynote starts"}]
    jsonl = clips.parent / "items.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert main(["index", str(jsonl), "--index", str(tmp_path / "idx"), "--model", str(tiny_dir),
                 "--segment-seconds", "100", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 error(s)" in out and "bad" in out
    with Index.open(tmp_path / "idx") as index:
        assert sorted(index.ids()) == ["doc", "items.jsonl/line-2", "talk#t=0,100", "talk#t=100,200",
                                       "talk#t=200,300"]
        record = index.get(["talk#t=100,200"])[0]
        assert (record["meta"]["start"], record["meta"]["end"], record["meta"]["speaker"]) == (100.0, 200.0, "ada")
        model = index.model
        # fps and max_frames of the line apply to each of its segments
        expected = model.encode_candidates([Item(video=clips / "talk.mp4", fps=0.1, max_frames=4, video_start=100.0,
                                                  video_end=200.0)])
        top = index.search_vectors(expected, k=1)[0][0]
        assert top.id == "talk#t=100,200" and top.score == pytest.approx(1.0, abs=1e-5)
    assert main(["index", str(jsonl), "--index", str(tmp_path / "text-idx"), "--model", "minilm", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 error(s)" in out and "cannot embed video" in out
