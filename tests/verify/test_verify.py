"""``umr verify``: umr's fast path against each family's reference on the built-in probes —
holding where umr is right, and failing, naming the probes, where a setting departs."""

from __future__ import annotations

import json

import numpy as np

import umr
from umr.cli import main
from umr.core.items import Item
from umr.verify import Probe, ProbeResult, Tolerance, compare, probe_set, reference_for, verify


def _kinds(out: str) -> dict[str, str]:
    """``{probe kind: verdict}`` from the printed table."""
    rows = {}
    for line in out.splitlines():
        parts = line.rsplit(None, 4)
        if len(parts) == 5 and parts[-1] in ("ok", "DIFFERS", "error"):
            rows[parts[0]] = parts[-1]
    return rows


def test_minilm_matches_sentence_transformers(capsys, tmp_path):
    code = main(["verify", "--model", "minilm", "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reference sentence-transformers" in out
    assert _kinds(out) == {"text candidate": "ok", "text candidate, past the window": "ok",
                           "text query": "ok", "text query + instruction": "ok"}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True and report["family"] == "text" and report["dtype"] == "float32"
    assert all(probe["max_abs"] <= 1e-5 for probe in report["probes"])


def test_tiny_gme_matches_its_reference_on_every_probe_kind(tiny_gme_dir, capsys):
    code = main(["verify", "--model", str(tiny_gme_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    kinds = _kinds(out)
    assert set(kinds.values()) == {"ok"}
    assert {"image RGBA", "image P", "image CMYK", "fused query + instruction", "PDF page"} <= set(kinds)
    assert "OK: 18 of 18 probes" in out


def test_tiny_qwen3vl_matches_its_reference(tiny_qwen3vl_dir, capsys):
    assert main(["verify", "--model", str(tiny_qwen3vl_dir)]) == 0, capsys.readouterr().out


def test_a_departing_option_fails_and_names_the_probes(tiny_gme_dir, capsys):
    code = main(["verify", "--model", str(tiny_gme_dir), "--max-image-tokens", "64"])
    out = capsys.readouterr().out
    assert code == 1
    kinds = _kinds(out)
    assert kinds["text query + instruction"] == "ok"  # text does not depend on the image bound
    assert kinds["image CMYK"] == "DIFFERS" and kinds["PDF page"] == "DIFFERS"
    assert "differs: page.pdf#page=1 [PDF page]" in out
    assert out.rstrip().splitlines()[-1].startswith("FAILED")


def test_a_processor_setting_changed_on_purpose_is_caught(tiny_gme_dir, tmp_path):
    model = umr.load_model(tiny_gme_dir)
    model.processor.max_length = 64  # cuts every sequence far earlier than the reference's 1800
    report = verify(model, workdir=tmp_path)
    assert not report.ok
    failed = {probe.id for probe in report.failed}
    assert "text-long" in failed and "text-short" not in failed


def test_a_probe_one_side_cannot_embed_is_that_probes_error(tmp_path):
    model = umr.load_model("minilm")
    reference = reference_for("text", model.identity.folder, device="cpu", dtype=__import__("torch").float32)
    probes = [Probe("text candidate", Item.candidate(text="a cat on a mat", id="ok")),
              Probe("image RGB", Item.candidate(image=str(_png(tmp_path)), id="picture"))]
    results = compare(model, reference, probes, Tolerance.for_run("float32", "cpu"))
    assert results[0].ok and results[0].error is None
    assert not results[1].ok and results[1].error.startswith("umr: ") and "cannot embed an image" in results[1].error


def test_a_family_without_a_reference_is_one_line(tmp_path, capsys):
    from umr.testing import write_tiny_clip

    folder = write_tiny_clip(tmp_path / "clip", seed=0)
    capsys.readouterr()
    assert main(["verify", "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "no reference for the 'clip-sf' family" in err and len(err.strip().splitlines()) == 1


def test_tolerance_depends_on_dtype_and_device():
    cpu, gpu, half = (Tolerance.for_run("float32", "cpu"), Tolerance.for_run("float32", "cuda"),
                      Tolerance.for_run("bfloat16", "cuda"))
    assert cpu.holds(0.999999, 5e-6) and not cpu.holds(0.999999, 5e-5)
    assert gpu.holds(0.99995, 5e-4) and not gpu.holds(0.9990, 5e-4)
    assert half.max_abs is None and half.holds(0.995, 0.2) and not half.holds(0.98, 0.0)


def test_vectors_of_another_dimension_are_an_error():
    result = ProbeResult.compare("x", "text", np.ones(4, np.float32), np.ones(8, np.float32),
                                 Tolerance.for_run("float32", "cpu"))
    assert not result.ok and "dimension" in result.error


def test_probes_are_the_same_on_every_run(tmp_path):
    first = probe_set(tmp_path / "a", sees_images=True)
    second = probe_set(tmp_path / "b", sees_images=True)
    assert [p.item.id for p in first] == [p.item.id for p in second]
    for a, b in zip(first, second):
        if isinstance(a.item.image, str):
            assert open(a.item.image, "rb").read() == open(b.item.image, "rb").read()
    assert [p.kind for p in probe_set(tmp_path / "c", sees_images=False)] == [
        "text candidate", "text candidate, past the window", "text query", "text query + instruction"]


def _png(folder):
    from PIL import Image

    path = folder / "picture.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    return path
