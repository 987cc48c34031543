"""``umr verify``: umr's fast path against each family's reference on the built-in probes —
holding where umr is right, and failing, naming the probes, where a setting departs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import umr
from umr.cli import main
from umr.core.items import Item
from umr.testing import write_tiny_colqwen, write_tiny_mmembed, write_tiny_uniir_clip_sf
from umr.verify import NoReference, Probe, ProbeResult, Tolerance, compare, probe_set, reference_for, verify


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


@pytest.mark.slow
def test_tiny_qwen3vl_matches_its_reference_on_images_and_videos(tiny_qwen3vl_dir, capsys):
    pytest.importorskip("av")
    code = main(["verify", "--model", str(tiny_qwen3vl_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    kinds = _kinds(out)
    assert set(kinds.values()) == {"ok"}
    assert {"video candidate", "video query + text + instruction", "video frame list", "image P"} <= set(kinds)


@pytest.mark.slow
def test_a_video_setting_changed_on_purpose_names_the_video_probes(tiny_qwen3vl_dir, tmp_path):
    pytest.importorskip("av")
    model = umr.load_model(tiny_qwen3vl_dir, max_frames=2)  # Qwen3VLEmbedder samples up to 64 (4 here)
    report = verify(model, workdir=tmp_path)
    assert not report.ok
    assert {p.id for p in report.failed} == {"clip-h264.mp4", "clip-mjpeg.avi", "video-query", "frame-list"}
    assert all(p.error is None and p.cosine < 0.99999 for p in report.failed)


# -- MM-Embed ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_mmembed_dir(tmp_path_factory):
    return write_tiny_mmembed(tmp_path_factory.mktemp("verify-mmembed") / "tiny-mm-embed", seed=0)


def test_tiny_mmembed_matches_its_reference_loop(tiny_mmembed_dir, capsys):
    code = main(["verify", "--model", str(tiny_mmembed_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reference umr's MM-Embed reference loop" in out and "ships no modeling_nvmmembed.py" in out
    assert set(_kinds(out).values()) == {"ok"} and "OK: 18 of 18 probes" in out


#: a checkpoint's own modeling_nvmmembed.py, reduced to what umr verify calls: NVMMEmbedModel's
#: from_pretrained and encode (the real one needs transformers 4.43: see the guide); it computes
#: with the reference loop, and counts its calls so the test sees it ran
SHIPPED_SCRIPT = '''
import torch
from umr.verify.references.mmembed import MMEmbedReference

CALLS = []


class NVMMEmbedModel:
    @classmethod
    def from_pretrained(cls, folder, dtype=None):
        model = cls()
        model.loop = MMEmbedReference(folder, dtype=dtype)
        return model

    def to(self, device):
        return self

    def eval(self):
        return self

    def encode(self, inputs, is_query=False, instruction=None, max_length=512):
        from umr.core.items import Item

        (record,) = inputs
        item = Item(text=record.get("txt"), image=record.get("img"), is_query=is_query, instruction=instruction)
        CALLS.append(max_length)
        return {"hidden_states": 3.0 * torch.as_tensor(self.loop.embed(item))[None]}
'''


def test_a_shipped_modeling_nvmmembed_is_the_reference_when_it_runs(tiny_mmembed_dir, tmp_path, capsys):
    folder = tmp_path / "with-script"
    shutil.copytree(tiny_mmembed_dir, folder)
    (folder / "modeling_nvmmembed.py").write_text(SHIPPED_SCRIPT)
    code = main(["verify", "--model", str(folder)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"reference {folder / 'modeling_nvmmembed.py'} (the authors' script), transformers" in out


def test_a_shipped_script_that_cannot_run_here_falls_back_and_says_why(tiny_mmembed_dir, tmp_path, capsys):
    folder = tmp_path / "old-script"
    shutil.copytree(tiny_mmembed_dir, folder)
    (folder / "modeling_nvmmembed.py").write_text(
        "from transformers.models.llava_next.modeling_llava_next import _merge_input_ids_with_image_features\n")
    code = main(["verify", "--model", str(folder)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reference umr's MM-Embed reference loop" in out
    assert "the folder's modeling_nvmmembed.py does not run here: ImportError" in out


def test_mmembed_cut_shorter_than_the_reference_names_the_long_probes(tiny_mmembed_dir, capsys):
    code = main(["verify", "--model", str(tiny_mmembed_dir), "--max-length", "40"])
    out = capsys.readouterr().out
    assert code == 1, out
    kinds = _kinds(out)
    assert kinds["text candidate, past the window"] == "DIFFERS" and kinds["text candidate"] == "ok"
    assert "differs: text-long [text candidate, past the window]" in out


# -- CLIP-SF -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip_sf_dir(tmp_path_factory):
    return write_tiny_uniir_clip_sf(tmp_path_factory.mktemp("verify-clip-sf") / "tiny-clip-sf", seed=0)


def test_tiny_clip_sf_matches_uniir(tiny_clip_sf_dir, capsys):
    code = main(["verify", "--model", str(tiny_clip_sf_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reference umr's UniIR CLIP-SF reference loop" in out and "clip_sf_tiny.pth" in out
    assert set(_kinds(out).values()) == {"ok"}


def test_plain_clip_is_checked_against_transformers(tiny_clip_sf_dir):
    model = umr.load_model(tiny_clip_sf_dir, checkpoint=False)
    report = verify(model)
    assert report.ok, report.table()
    assert report.reference.startswith("transformers ") and "CLIPModel + UniIR's fusion rule" in report.reference


def test_clip_sf_text_cut_shorter_than_the_reference_is_caught(tiny_clip_sf_dir, capsys):
    code = main(["verify", "--model", str(tiny_clip_sf_dir), "--max-length", "6"])
    out = capsys.readouterr().out
    assert code == 1, out
    kinds = _kinds(out)
    assert kinds["text candidate"] == "DIFFERS" and kinds["fused candidate"] == "DIFFERS"
    assert kinds["image RGB"] == "ok" and kinds["PDF page"] == "ok"  # no text: nothing to cut
    assert "differs: text-short [text candidate]" in out


# -- ColQwen (late interaction) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_colqwen_dir(tmp_path_factory):
    return write_tiny_colqwen(tmp_path_factory.mktemp("verify-colqwen") / "adapter", "2.5", seed=0)


@pytest.mark.slow
def test_tiny_colqwen_matches_its_reference_token_by_token(tiny_colqwen_dir, capsys, tmp_path):
    code = main(["verify", "--model", str(tiny_colqwen_dir), "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    kinds = _kinds(out)
    assert set(kinds.values()) == {"ok"}
    assert {"text query", "image CMYK", "PDF page", "MaxSim scores (per query token)"} <= set(kinds)
    assert "colpali-engine" in out  # the loop says it stands in for colpali-engine, or colpali-engine ran
    report = json.loads((tmp_path / "report.json").read_text())
    assert all(p["max_abs"] <= 1e-5 for p in report["probes"])


@pytest.mark.slow
def test_colqwen_with_fewer_image_tokens_names_the_page_probes(tiny_colqwen_dir, capsys):
    code = main(["verify", "--model", str(tiny_colqwen_dir), "--max-image-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 1, out
    kinds = _kinds(out)
    assert kinds["text query"] == "ok" and kinds["text candidate"] == "ok"
    # fewer tokens per page: each page probe is an error (token counts differ), and the scores move
    assert kinds["PDF page"] == "error" and kinds["MaxSim scores (per query token)"] == "DIFFERS"
    assert "differs: page.pdf#page=1 [PDF page]: tokens x dimension" in out
    assert "differs: maxsim:query-page [MaxSim scores (per query token)]" in out


def test_token_vectors_are_compared_token_by_token():
    tolerance = Tolerance.for_run("float32", "cpu")
    ours = np.eye(3, 4, dtype=np.float32)
    close = ProbeResult.compare("d", "doc", ours, ours + 1e-7, tolerance)
    assert close.ok and 0 < close.max_abs < 2e-7
    one_token_off = ours.copy()
    one_token_off[2] = [0, 0, 0.6, 0.8]
    far = ProbeResult.compare("d", "doc", ours, one_token_off, tolerance)
    assert not far.ok and far.cosine == pytest.approx(0.6)
    fewer = ProbeResult.compare("d", "doc", ours, ours[:2], tolerance)
    assert fewer.error == "tokens x dimension (3, 4) vs the reference's (2, 4)"


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


def test_a_family_without_a_reference_is_refused():
    with pytest.raises(NoReference, match="no reference for the 'late-fusion' family yet"):
        reference_for("late-fusion", "/nowhere", device="cpu", dtype=torch.float32)


# -- --reference PATH ------------------------------------------------------------------------------

#: a reference file as a user writes one: sentence-transformers, queries with an instruction
#: prefixed as umr documents it for text models (an unnormalised vector: umr normalises it)
USER_REFERENCE = '''"""sentence-transformers by hand"""
from sentence_transformers import SentenceTransformer


class Mine:
    def __init__(self, model):
        self.model = model

    def embed(self, item):
        text = f"{item.instruction} {item.text}" if item.is_query and item.instruction else item.text
        return 7.0 * self.model.encode([text])[0]


def load(folder, *, device, dtype):
    return Mine(SentenceTransformer(str(folder), device=device))
'''


def test_a_reference_file_is_used_and_named(tmp_path, capsys):
    path = tmp_path / "my_reference.py"
    path.write_text(USER_REFERENCE)
    code = main(["verify", "--model", "minilm", "--reference", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"reference {path} (sentence-transformers by hand)" in out


def test_a_reference_file_that_computes_otherwise_fails_the_probes(tmp_path, capsys):
    path = tmp_path / "no_instruction_reference.py"
    path.write_text(USER_REFERENCE.replace("return 7.0 * self.model.encode([text])[0]",
                                           "return self.model.encode([item.text])[0]"))
    code = main(["verify", "--model", "minilm", "--reference", str(path)])
    out = capsys.readouterr().out
    assert code == 1 and "differs: query-instructed [text query + instruction]" in out
    assert _kinds(out)["text candidate"] == "ok"


@pytest.mark.parametrize("content, message", [
    (None, "not a Python file"),
    ("import nothing_of_that_name\n", "cannot be imported (ModuleNotFoundError"),
    ("x = 1\n", "defines no load(folder, *, device, dtype)"),
    ("def load(folder, *, device, dtype):\n    return 3\n", "returned int, which has no embed(item)"),
    ("def load(folder, *, device, dtype):\n    raise OSError('no weights')\n", "load() failed (OSError: no weights)"),
])
def test_a_reference_file_that_breaks_the_interface_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "ref.py"
    if content is not None:
        path.write_text(content)
    capsys.readouterr()
    assert main(["verify", "--model", "minilm", "--reference", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


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


def test_a_device_this_torch_cannot_use_is_refused_before_any_work():
    model = umr.load_model("minilm")
    with pytest.raises(ValueError, match="not a torch device"):
        verify(model, device="tpu-ish")


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
