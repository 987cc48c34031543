"""The index knows its model by what it is: searched from anywhere, any spelling, other weights refused."""

import json
import shutil

import pytest

from umr.cli import main
from umr.index import Index, ModelMismatch
from umr.testing import write_tiny_clip

pytestmark = pytest.mark.dtype_sensitive  # the default dtype matters here: CI runs it under both UMR_CPU_BF16 settings


def test_built_with_a_relative_model_path_searched_from_another_folder(tmp_path, capsys, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_tiny_clip(work / "m", seed=0)
    (work / "c").mkdir()
    (work / "c" / "a.txt").write_text("red apples in autumn")
    (work / "c" / "b.txt").write_text("a violin concerto")
    monkeypatch.chdir(work)
    assert main(["index", "c", "--index", "ix", "--model", "./m", "--no-progress"]) == 0
    capsys.readouterr()

    monkeypatch.chdir(elsewhere)
    assert main(["search", "--index", "../work/ix", "red apples in autumn", "--json", "-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "c/a.txt"
    for spelling in ("../work/m", str(work / "m"), str(work / "m") + "/"):  # one model, three spellings
        assert main(["search", "--index", "../work/ix", "violin", "--model", spelling, "-k", "1"]) == 0
    assert main(["index", "../work/c", "--index", "../work/ix", "--model", "../work/m", "--no-progress"]) == 0
    assert "added 0, updated 0, unchanged 2" in capsys.readouterr().out
    # dtype: another one only when asked for explicitly at search time; never mixed into the index
    assert main(["search", "--index", "../work/ix", "violin", "--dtype", "bfloat16", "-k", "1"]) == 0
    capsys.readouterr()
    assert main(["index", "../work/c", "--index", "../work/ix", "--dtype", "bfloat16", "--no-progress"]) == 2
    assert "--dtype bfloat16 (built with float32)" in capsys.readouterr().err
    assert main(["index", "../work/c", "--index", "../work/ix", "--dtype", "float32", "--no-progress"]) == 0
    assert "unchanged 2" in capsys.readouterr().out  # the dtype it was built with is no change

    # a different model saved at the same path: refused, naming both
    with Index.open(work / "ix") as ix:
        before = ix.recorded_identity.files
    shutil.rmtree(work / "m")
    write_tiny_clip(work / "m", seed=1)
    capsys.readouterr()
    assert main(["search", "--index", "../work/ix", "violin"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "weights/config files" in err and before[:12] in err and str((work / "m").resolve()) in err
    assert main(["index", "../work/c", "--index", "../work/ix", "--no-progress"]) == 2
    assert "weights/config files" in capsys.readouterr().err


def test_an_index_created_from_a_loaded_model_reloads_it_with_its_options(tmp_path):
    import umr
    from umr import Item

    folder = write_tiny_clip(tmp_path / "m", seed=0)
    model = umr.load_model(folder, max_length=8)
    with Index.create(tmp_path / "ix", model) as ix:
        ix.add([Item(text="red apples in autumn", id="a"), Item(text="a violin concerto", id="b")])
    with Index.open(tmp_path / "ix") as ix:  # loads the recorded model: same options, so accepted
        assert ix.search("a violin concerto", k=1)[0].id == "b"
        assert ix.model.max_length == 8
    other = umr.load_model(folder)
    with pytest.raises(ModelMismatch, match="max_length: 8 vs"):
        Index.open(tmp_path / "ix", model=other)
