"""SIGKILL in the middle of ``umr synth``, then the same command: nothing finished is generated
again and the file equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import CountingGenerator, run, scripted_generator

SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from umr import load_model
    from synth.conftest import CountingGenerator, scripted_generator
    from synth.test_pipeline import run

    class Slow(CountingGenerator):
        def generate(self, chats, *, seed):
            time.sleep(1.0)
            return super().generate(chats, seed=seed)

    clip = load_model({clip!r})
    run(__import__("pathlib").Path({corpus!r}), __import__("pathlib").Path({out!r}),
        Slow(scripted_generator({generator!r})), clip, image_threshold=-1.0, seed=7)
""")


def finished_generations(cache: Path) -> int:
    if not cache.exists():
        return 0
    try:
        with sqlite3.connect(str(cache)) as db:
            return sum(1 for (value,) in db.execute("SELECT value FROM work") if isinstance(json.loads(value), str))
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tiny_generator_dir, tiny_clip, corpus, tmp_path):
    out = tmp_path / "killed.jsonl"
    cache = Path(str(out) + ".cache") / "work.sqlite"
    script = SCRIPT.format(tests=str(Path(__file__).parent.parent), clip=tiny_clip.name, corpus=str(corpus),
                           out=str(out), generator=str(tiny_generator_dir))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while finished_generations(cache) < 5 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert child.poll() is None, "the run ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = finished_generations(cache)
    assert done >= 5 and not out.exists()

    resumed = CountingGenerator(scripted_generator(tiny_generator_dir))
    summary = run(corpus, out, resumed, tiny_clip, image_threshold=-1.0, seed=7)
    whole = CountingGenerator(scripted_generator(tiny_generator_dir))
    reference = tmp_path / "whole.jsonl"
    run(corpus, reference, whole, tiny_clip, image_threshold=-1.0, seed=7)
    assert resumed.replies == summary.generated == whole.replies - done  # nothing finished is generated again
    assert out.read_bytes() == reference.read_bytes()
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) > 0
