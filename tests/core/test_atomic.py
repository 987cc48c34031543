"""umr.core.atomic: a file is replaced whole or left as it was."""

import numpy as np
import pytest

from umr.core.atomic import atomic_path, atomic_writer, write_bytes_atomic, write_text_atomic


def test_each_form_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    write_bytes_atomic(target, b"one")
    assert target.read_bytes() == b"one"
    write_bytes_atomic(target, lambda handle: np.save(handle, np.arange(3)))
    assert np.load(target).tolist() == [0, 1, 2]
    write_text_atomic(tmp_path / "t.txt", "caf\u00e9\n")
    assert (tmp_path / "t.txt").read_bytes() == "caf\u00e9\n".encode()
    with atomic_writer(tmp_path / "lines.txt", text=True) as handle:
        handle.write("a\n")
        handle.write("b\n")
    assert (tmp_path / "lines.txt").read_text() == "a\nb\n"
    with atomic_path(tmp_path / "by-path.bin") as tmp:
        assert tmp.parent == tmp_path and tmp.name == "by-path.bin.tmp"
        tmp.write_bytes(b"written by a library that wants a path")
    assert (tmp_path / "by-path.bin").read_bytes() == b"written by a library that wants a path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-path.bin", "f.bin", "lines.txt", "t.txt"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "manifest.json"
    write_text_atomic(target, "old")

    def half_then_fail(handle):
        handle.write(b"new, but cut sh")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
