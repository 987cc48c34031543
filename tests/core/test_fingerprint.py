"""umr.core.fingerprint: one hash of what determines a vector, with a stat-keyed memory of file digests."""

import os

from PIL import Image

import umr.core.fingerprint as fpm
from umr.eval.cache import fingerprint as cache_fingerprint
from umr.core.fingerprint import FileDigests, file_digest, item_fingerprint
from umr.core.items import Item


def _bmp(path, colour):
    Image.new("RGB", (8, 8), colour).save(path)  # BMP: the same byte size for every colour
    return path


def test_fingerprint_covers_role_text_instruction_and_image_content(tmp_path):
    a = _bmp(tmp_path / "a.bmp", (255, 0, 0))
    fp = item_fingerprint
    assert fp(Item.query("x")) != fp(Item.candidate("x"))
    assert fp(Item.candidate("x")) != fp(Item.candidate("y"))
    assert fp(Item.query("x", instruction="find")) != fp(Item.query("x"))
    # candidates are embedded without an instruction, so one does not change their fingerprint
    assert fp(Item(text="x", instruction="find")) == fp(Item.candidate("x"))
    # image content, not its path: two copies are one fingerprint; bytes and pixels count too
    b = tmp_path / "b.bmp"
    b.write_bytes(a.read_bytes())
    assert fp(Item.candidate(image=str(a))) == fp(Item.candidate(image=b))
    assert fp(Item.candidate(image=a.read_bytes())) != fp(Item.candidate(image=b"other"))
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    assert fp(Item.candidate(image=red)) == fp(Item.candidate(image=red.copy()))
    assert fp(Item.candidate(image=red)) != fp(Item.candidate(image=blue))
    assert fp(Item.candidate(image=red)) != fp(Item.candidate(image=red.convert("L")))
    # an unreadable file has a fingerprint (the load reports the error), which changes when it appears
    missing = fp(Item.candidate(image=str(tmp_path / "late.bmp")))
    _bmp(tmp_path / "late.bmp", (0, 0, 255))
    assert fp(Item.candidate(image=str(tmp_path / "late.bmp"))) != missing
    assert len(fp(Item.candidate("x"))) == 40  # the eval cache stores U40 fingerprints


def test_fingerprint_covers_the_video_and_its_sampling(tmp_path):
    """Two videos (or one sampled two ways) are two items: an evaluation cache must not mix them up."""
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"video a")
    b.write_bytes(b"video b")
    fp = item_fingerprint
    assert fp(Item(video=str(a))) != fp(Item(video=str(b)))
    assert fp(Item(video=str(a))) == fp(Item(video=a))  # content, not how the path is spelled
    assert fp(Item(video=str(a))) != fp(Item(video=str(a), fps=2.0))
    assert fp(Item(video=str(a))) != fp(Item(video=str(a), max_frames=8))
    assert fp(Item(video=str(a), video_start=0, video_end=30)) != fp(Item(video=str(a), video_start=30, video_end=60))
    assert fp(Item(video=str(a), text="t")) != fp(Item(text="t"))
    frames = [_bmp(tmp_path / "f0.bmp", (255, 0, 0)), _bmp(tmp_path / "f1.bmp", (0, 0, 255))]
    assert fp(Item(video=frames)) != fp(Item(video=frames[::-1]))


def test_an_image_overwritten_in_place_changes_its_fingerprint(tmp_path):
    """Same size, modification time set back: the content still decides (ctime moves)."""
    path = _bmp(tmp_path / "pic.bmp", (255, 0, 0))
    before = item_fingerprint(Item.candidate(image=str(path)))
    st = os.stat(path)
    _bmp(path, (0, 0, 255))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    assert item_fingerprint(Item.candidate(image=str(path))) != before


def test_file_digests_are_remembered_and_changes_noticed(tmp_path, monkeypatch):
    path = _bmp(tmp_path / "pic.bmp", (255, 0, 0))
    reads = []
    real = fpm._hash_file
    monkeypatch.setattr(fpm, "_hash_file", lambda p: reads.append(p) or real(p))
    with FileDigests(tmp_path / "d.sqlite") as digests:
        first = file_digest(path, digests=digests)
        assert file_digest(path, digests=digests) == first and len(reads) == 1
    with FileDigests(tmp_path / "d.sqlite") as digests:  # remembered across runs
        assert file_digest(path, digests=digests) == first and len(reads) == 1
        st = os.stat(path)
        _bmp(path, (0, 255, 0))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert file_digest(path, digests=digests) != first and len(reads) == 2


def test_the_evaluation_cache_uses_the_same_fingerprint(tmp_path):
    path = _bmp(tmp_path / "pic.bmp", (1, 2, 3))
    for item in (Item.query("q", image=str(path), instruction="i"), Item.candidate("c")):
        assert cache_fingerprint(item) == item_fingerprint(item)
