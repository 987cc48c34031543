"""``umr synth`` from the command line, and its output taken by ``umr train``."""

from __future__ import annotations

import json

import pytest

from umr.cli import main

from .conftest import check_training_schema, run, scripted_generator


def test_cli_with_a_random_generator_reports_every_passage(tiny_generator_dir, tiny_clip, corpus, tmp_path, capsys):
    out = tmp_path / "synth.jsonl"
    code = main(["synth", "--source", str(corpus), "--generator", str(tiny_generator_dir), "--retriever",
                 tiny_clip.name, "--output", str(out), "--max-new-tokens", "8", "--max-attempts", "2",
                 "--limit", "3", "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "doc2query: 0 kept, 3 reported" in err and "wrote 0 examples" in err
    assert out.read_text() == ""
    errors = [json.loads(line) for line in (tmp_path / "synth.jsonl.errors.jsonl").read_text().splitlines()]
    assert len(errors) == 3 and all("no valid reply after 2 attempts" in e["error"] for e in errors)


def test_cli_refuses_unknown_kinds(tiny_generator_dir, corpus, tmp_path, capsys):
    code = main(["synth", "--source", str(corpus), "--generator", str(tiny_generator_dir), "--retriever", "x",
                 "--output", str(tmp_path / "o.jsonl"), "--kinds", "t2it,t2t"])
    assert code == 2 and "kinds are some of t2it, it2t, it2it" in capsys.readouterr().err


def test_umr_train_accepts_the_output(tiny_generator_dir, tiny_clip, corpus, tmp_path):
    train = pytest.importorskip("umr.train")
    out = tmp_path / "synth.jsonl"
    run(corpus, out, scripted_generator(tiny_generator_dir), tiny_clip, image_threshold=-1.0)
    check_training_schema(out)
    examples, errors = train.read_examples_jsonl(out)
    assert errors == [] and len(examples) == len(out.read_text().splitlines()) > 0
    folder = train.train(train.TrainConfig(model=tiny_clip.name, data=[str(out)], output=str(tmp_path / "trained"),
                                           max_steps=2, batch_size=4, progress=False))
    assert (folder / "training.json").is_file()
