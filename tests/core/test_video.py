"""umr.core.video decodes only what the sampled frames need: it seeks to the key frame before each
wanted frame instead of decoding the whole video (counted here, frame by frame, on the decoder's
own output), and its frames equal those of decoding everything."""

from __future__ import annotations

import numpy as np
import pytest

from umr.core import video
from umr.testing.video import write_test_clip
from umr.verify.references.qwen_video import decode_all

pytest.importorskip("av")


class CountingContainer:
    """A PyAV container whose ``decode`` counts the frames the decoder hands out."""

    def __init__(self, container, counter: list[int]):
        self._container, self._counter = container, counter

    def __enter__(self):
        self._container.__enter__()
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def seek(self, *args, **kwargs):
        return self._container.seek(*args, **kwargs)

    def demux(self, *args, **kwargs):  # probing reads packets: not decoded frames
        return self._container.demux(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._counter[0] += 1
            yield frame


@pytest.fixture
def decoded(monkeypatch):
    """How many frames ``read_frames`` decoded (not only converted) since the fixture was made."""
    counter = [0]
    opened = video._open

    def counting_open(source, item_id):
        container, stream = opened(source, item_id)
        return CountingContainer(container, counter), stream

    monkeypatch.setattr(video, "_open", counting_open)
    return counter


def expected_decodes(info: video.VideoInfo, wanted: list[int]) -> int:
    """Frames a seeking reader decodes: from the key frame before each wanted frame, or on from the
    last decoded frame when that key frame is not beyond it."""
    keys = [info.pts.index(pts) for pts in info.keyframe_pts]
    count, last = 0, None
    for target in sorted(set(wanted)):
        key = max(k for k in keys if k <= target)
        start = key if last is None or key > last else last + 1
        count += target - start + 1
        last = target
    return count


def test_sampled_frames_decode_only_their_groups_of_pictures(tmp_path, decoded):
    """A 2-minute clip at 30 frames/s with a key frame every 20 frames, sampled as Qwen3-VL samples
    it (1 frame per second): each wanted frame costs its group of pictures up to it, no more."""
    clip = write_test_clip(tmp_path / "long.mp4", 120, rate=30, width=64, height=48)  # 3,600 frames, GOP 20
    info = video.probe_video(clip)
    assert info.frames == 3600 and len(info.keyframe_pts) == 180
    wanted = np.linspace(0, info.frames - 1, 64).round().astype(int).tolist()
    frames = video.read_frames(clip, wanted, info=info)
    assert decoded[0] == expected_decodes(info, wanted)
    assert decoded[0] < info.frames // 4  # decoding everything: 3,600
    everything, _ = decode_all(clip)
    assert np.array_equal(frames, everything[wanted])


def test_frames_of_one_group_are_decoded_once(tmp_path, decoded):
    """Wanted frames inside one group of pictures are decoded in one pass, not from the key frame again."""
    clip = write_test_clip(tmp_path / "gop.mp4", 10, rate=10, width=64, height=48)  # 100 frames, GOP 20
    info = video.probe_video(clip)
    video.read_frames(clip, [41, 45, 59], info=info)
    assert decoded[0] == 20  # frames 40..59: the group holding all three, decoded once


def test_a_time_range_decodes_only_that_range(tmp_path, decoded):
    clip = write_test_clip(tmp_path / "range.mp4", 30, rate=10, width=64, height=48)  # 300 frames
    info = video.probe_video(clip)
    wanted = list(range(200, 240, 4))
    video.read_frames(clip, wanted, info=info)
    # key frames at 200 and 220: 200..216, then a seek to 220 and on to 236; none before 200
    assert decoded[0] == expected_decodes(info, wanted) == 34
