"""Generated video clips for tests and examples: small, quick to write, a scene change every 30 s."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_test_clip(path: str | Path, seconds: float, *, rate: int = 2, width: int = 64, height: int = 48,
                    scene_seconds: float = 30.0) -> Path:
    """An H.264 clip of ``seconds`` at ``rate`` frames per second whose colour changes every
    ``scene_seconds`` (a moving bar keeps the frames of one scene apart). Needs PyAV."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": "20", "preset": "ultrafast"}
        for i in range(int(seconds * rate)):
            scene = int(i / rate // scene_seconds) % 10
            frame = np.full((height, width, 3), (25 * scene, 255 - 25 * scene, (80 * scene) % 256), np.uint8)
            frame[:, (i * 3) % width] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
