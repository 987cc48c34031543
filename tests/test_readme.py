"""The README's three short examples run as written (minilm, offline) and show what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_examples() -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block in the README's *Three short examples*."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Three short examples\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(\w+)\n(.*?)^```$", section, flags=re.S | re.M)


def run_block(language: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run one block in ``cwd`` as a reader would, in a shell where ``.venv`` is activated (bash,
    or the venv's python)."""
    venv = cwd / ".venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else ["python", "-c", code]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README {language} block failed:\n{code}\n--- stderr:\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_three_readme_examples_run_as_written(tmp_path):
    # a checkout as the reader has it after the quick start: the sample corpus, the bundled
    # benchmark and the virtualenv that holds `umr`
    for name in ("samples", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    blocks = readme_examples()
    assert [language for language, _ in blocks] == ["python", "bash", "python", "bash"]

    embed, index_and_search, search_in_python, evaluate = (run_block(lang, code, tmp_path) for lang, code in blocks)

    scores = [float(x) for x in re.findall(r"-?\d+\.\d+", embed.stdout)]
    assert len(scores) == 2 and scores[0] > 0.6 > 0.1 > scores[1], embed.stdout  # the llama passage, far above
    first_hit = index_and_search.stdout.strip().splitlines()[-3].split()
    assert first_hit[:1] == ["1"] and first_hit[2] == "corpus/scans/bakery-receipt.png", index_and_search.stdout
    first_hit = search_in_python.stdout.splitlines()[0].split()
    assert first_hit[:1] == ["1"] and first_hit[2] == "corpus/docs/garden-birds.pdf#page=2", search_in_python.stdout
    said = evaluate.stdout + evaluate.stderr
    ndcg = float(re.search(r"ndcg@10 = ([\d.]+)", said).group(1))
    assert abs(ndcg - 89.71) < 1.0, said  # 89.71 in float32, as the README says
    assert (tmp_path / "out" / "minilm" / "results.md").is_file()
