import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hashing  # noqa: E402,F401 - registers the hash-test model
from milvus_server import MilvusServerProcess, can_isolate  # noqa: E402

HASHING_CLI = str(Path(__file__).parent / "hashing.py")


def _milvus_available() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """One Milvus standalone server (the ``milvus`` package) for the session, reachable on loopback
    only (see milvus_server.py), its data in a temporary folder; started on first use (about 10 s)."""
    try:
        import milvus  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        pytest.skip("the milvus server package is not installed (pip install milvus==2.3.5)")
    if reason := can_isolate():
        pytest.skip(f"the Milvus server {reason}")
    server = MilvusServerProcess(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - any start-up failure is a skip with its reason
        pytest.skip(f"the Milvus server did not start: {type(exc).__name__}: {exc} (log: {server.log})")
    yield server
    server.close()


@pytest.fixture(params=["faiss", "milvus", "milvus-server"])
def backend(request):
    """Where vectors live: the embedded faiss store, Milvus Lite (a local file) or a Milvus server."""
    if request.param != "faiss" and not _milvus_available():
        pytest.skip("pymilvus / milvus-lite not installed")
    return request.param


@pytest.fixture
def store_options(request, tmp_path, backend):
    """``Index.create`` keyword arguments for the chosen backend; a function of the index name
    (each test gets its own Lite file or server collection)."""
    server = request.getfixturevalue("milvus_server") if backend == "milvus-server" else None

    def options(name="ix"):
        if backend == "faiss":
            return {"backend": "faiss"}
        if server is None:
            return {"backend": "milvus", "uri": str(tmp_path / f"{name}.db")}
        return {"backend": "milvus", "uri": server.uri, "collection": f"t{uuid.uuid4().hex}"}

    return options


def cli_store_args(options: dict) -> list[str]:
    """The ``umr index`` options for :func:`store_options`' keyword arguments."""
    args = ["--backend", options["backend"]]
    if "uri" in options:
        args += ["--uri", options["uri"]]
    if "collection" in options:
        args += ["--collection", options["collection"]]
    return args


@pytest.fixture
def make_index(tmp_path, store_options):
    """Create an Index on the chosen backend."""
    from umr.index import Index

    created = []

    def make(model=None, name="ix", **options):
        model = model or hashing.HashEmbedder()
        index = Index.create(tmp_path / name, model, **store_options(name), **options)
        created.append(index)
        return index

    yield make
    for index in created:
        index.close()
