import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hashing  # noqa: E402,F401 - registers the hash-test model

HASHING_CLI = str(Path(__file__).parent / "hashing.py")


def _milvus_available() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(params=["faiss", "milvus"])
def backend(request):
    if request.param == "milvus" and not _milvus_available():
        pytest.skip("pymilvus / milvus-lite not installed")
    return request.param


@pytest.fixture
def make_index(tmp_path, backend):
    """Create an Index on the chosen backend (Milvus Lite: a local .db file)."""
    from umr.index import Index

    created = []

    def make(model=None, name="ix", **options):
        model = model or hashing.HashEmbedder()
        folder = tmp_path / name
        uri = str(tmp_path / f"{name}.db") if backend == "milvus" else None
        index = Index.create(folder, model, backend=backend, uri=uri, **options)
        created.append(index)
        return index

    yield make
    for index in created:
        index.close()
