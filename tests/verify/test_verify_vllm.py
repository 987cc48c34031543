"""``umr verify --reference vllm``: against a real HTTP server on loopback. vLLM itself is not
run here (no GPU, no vLLM install); ``umr serve`` speaks the same OpenAI embeddings shape
(strings as ``input``, images as chat ``messages`` with ``image_url`` parts) and the same
``/v1/rerank`` shape, so a server of the same model must agree and one of another model must not."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from umr.cli import main
from umr.core.items import Item
from umr.rerank import load_reranker
from umr.verify.references.vllm import ServerRefused, VllmRerankReference, VllmServer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny GME and a tiny cross-encoder the server serves, and one other of each."""
    from umr.testing import write_tiny_cross_encoder, write_tiny_gme

    root = tmp_path_factory.mktemp("vllm")
    return {"gme": write_tiny_gme(root / "tiny-gme", seed=0), "other-gme": write_tiny_gme(root / "other-gme", seed=1),
            "ce": write_tiny_cross_encoder(root / "tiny-ce"), "other-ce": write_tiny_cross_encoder(root / "other-ce",
                                                                                                  seed=1)}


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    """``umr serve --model <tiny GME> --rerank <tiny cross-encoder>`` in a subprocess; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("vllm-log") / "serve.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "umr", "serve", "--model", str(folders["gme"]), "--rerank",
                                str(folders["ce"]), "--port", str(port), "--threads", "1"],
                               stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    pytest.fail(f"umr serve did not start:\n{log.read()}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.mark.slow
def test_same_embedder_served_agrees_on_every_probe(folders, server, tmp_path, capsys):
    code = main(["verify", "--model", str(folders["gme"]), "--reference", "vllm", "--vllm-url", server,
                 "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"reference an OpenAI-compatible server at {server}/v1/embeddings, model '{folders['gme']}'" in out
    report = json.loads((tmp_path / "report.json").read_text())
    kinds = {row["kind"] for row in report["kinds"]}
    assert {"image RGBA", "image CMYK", "fused query + instruction", "PDF page", "text query + instruction"} <= kinds
    assert report["ok"] and len(report["probes"]) == 18


@pytest.mark.slow
def test_another_embedder_served_differs(folders, server, capsys):
    code = main(["verify", "--model", str(folders["other-gme"]), "--reference", "vllm", "--vllm-url", server + "/v1",
                 "--vllm-model", str(folders["gme"])])
    out = capsys.readouterr().out
    assert code == 1
    assert "differs: text-short [text candidate]" in out and "differs: page.pdf#page=1 [PDF page]" in out


def test_same_reranker_served_agrees(folders, server, capsys):
    code = main(["verify", "--reranker", str(folders["ce"]), "--reference", "vllm", "--vllm-url", server])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "/v1/rerank" in out and "OK: 6 of 6 pairs" in out


def test_another_reranker_served_differs(folders, server, capsys):
    assert main(["verify", "--reranker", str(folders["other-ce"]), "--reference", "vllm", "--vllm-url", server]) == 1
    assert "differs: query-plain -> text-short [text -> text]" in capsys.readouterr().out


def test_requests_the_server_refuses_are_raised_for_that_probe(folders, server, tmp_path):
    """umr serve's /v1/rerank reads text documents only: an image document is refused (HTTP 422),
    a fused one cannot be put in the rerank API at all. Each raises for its probe alone
    (``compare_scores`` makes it that pair's error); a text pair is still scored."""
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    reference = VllmRerankReference(VllmServer(server))
    query, text = Item.query("a red square", id="q"), Item.candidate("a red square", id="text")
    assert abs(reference.score(query, text) - load_reranker(folders["ce"]).score(query, [text])[0]) <= 1e-5
    with pytest.raises(ServerRefused, match="HTTP 422"):
        reference.score(query, Item.candidate(image=str(tmp_path / "red.png"), id="image"))
    with pytest.raises(ValueError, match="a text or an image per side, not both"):
        reference.score(query, Item.candidate("red", image=str(tmp_path / "red.png"), id="fused"))


def test_an_unreachable_server_is_one_line(folders, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    assert main(["verify", "--reranker", str(folders["ce"]), "--reference", "vllm", "--vllm-url",
                 f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "cannot list the models of the server" in err and len(err.strip().splitlines()) == 1
    assert main(["verify", "--reranker", str(folders["ce"]), "--reference", "vllm"]) == 2
    assert "needs --vllm-url" in capsys.readouterr().err
