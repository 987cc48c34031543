"""umr.models.identity: a model known by its files and options, not by how its path is spelled."""

import shutil

import numpy as np
import pytest

import umr
from umr.models.base import Embedder
from umr.testing import write_tiny_clip
from umr.models.identity import SMALL_FILE_BYTES, files_fingerprint, identify

pytestmark = pytest.mark.dtype_sensitive  # the default dtype matters here: CI runs it under both UMR_CPU_BF16 settings


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("ident") / "m", seed=0)


def test_spellings_and_copies_share_a_key_other_weights_and_options_do_not(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_clip.parent)
    a = umr.load_model("./m")
    b = umr.load_model(str(tiny_clip))
    assert a.identity.folder == b.identity.folder == str(tiny_clip.resolve())
    assert a.identity.key() == b.identity.key() and a.identity.source == str(tiny_clip.resolve())
    copy = tmp_path / "copy"
    shutil.copytree(tiny_clip, copy)
    assert umr.load_model(copy).identity.key() == a.identity.key()  # same files elsewhere: same vectors
    other = umr.load_model(write_tiny_clip(tmp_path / "other", seed=1))
    assert other.identity.key() != a.identity.key()
    assert any(d.startswith("weights/config files") for d in a.identity.differences(other.identity))
    shorter = umr.load_model(tiny_clip, max_length=8)
    assert shorter.identity.options["max_length"] == 8
    assert shorter.identity.key() != a.identity.key()
    assert a.identity.differences(shorter.identity) == [f"max_length: {a.max_length} vs 8"]
    assert a.identity.options["dtype"] == "float32"


def test_large_files_are_fingerprinted_by_their_bytes_docs_ignored(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    blob = np.random.default_rng(0).integers(0, 255, SMALL_FILE_BYTES + 3 * 2**20, dtype=np.uint8)
    weights.write_bytes(blob.tobytes())
    (folder / "README.md").write_text("docs do not change vectors")
    first = files_fingerprint(folder)
    (folder / "README.md").write_text("edited docs")
    assert files_fingerprint(folder) == first
    blob[-1] ^= 1
    weights.write_bytes(blob.tobytes())
    assert files_fingerprint(folder) != first
    (folder / "config.json").write_text('{"a": 1}')
    assert files_fingerprint(folder) != first


class _Fixed(Embedder):
    dim = 4
    name = "fixed"

    def _cost(self, item):
        return 1

    def _embed_batch(self, items):
        return np.ones((len(items), 4), np.float32)

    def vector_options(self):
        return {"prompts": {"query": "q: "}}


def test_a_hub_snapshot_is_recorded_as_hub_id_and_revision(tmp_path):
    snapshot = tmp_path / "hub" / "models--acme--embed-small" / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    ident = identify(_Fixed(), snapshot, name="acme/embed-small", family="text", load_options={"device": "cpu"})
    assert (ident.hub_id, ident.revision) == ("acme/embed-small", "0123456789abcdef")
    assert ident.source == "acme/embed-small" and "device" not in ident.options
    assert ident.options == {"prompts": {"query": "q: "}}
    assert type(ident).from_dict(ident.to_dict()) == ident


def test_a_large_weights_file_changed_in_place_changes_the_fingerprint(tmp_path, monkeypatch):
    """Weights are hashed whole (once per version, remembered by stat signature): one tensor's
    bytes changed mid-file, same size and modification time, is another model."""
    import os

    from umr.models import identity

    monkeypatch.setenv("UMR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(identity, "SMALL_FILE_BYTES", 1024)
    identity.weights_digests.cache_clear()
    folder = tmp_path / "m"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 64)  # 16 KiB: "large" here
    before = identity.files_fingerprint(folder)
    assert identity.files_fingerprint(folder) == before  # remembered, same answer
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[8000] ^= 0xFF  # the middle, far from both ends
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert identity.files_fingerprint(folder) != before
    identity.weights_digests.cache_clear()
