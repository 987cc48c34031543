"""mteb interoperability: a umr model runs inside ``mteb.evaluate`` through MtebEncoder.

Uses a task built here in memory from the bundled stdlib-docs collection (no downloads) and
checks that mteb's NDCG@10, MAP@10 and Recall@10 equal umr's own evaluation of the same model and data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")

from umr.eval import EvalConfig, MtebEncoder, evaluate, load_beir_task  # noqa: E402

DATA = Path(__file__).parents[1] / "fixtures" / "eval" / "stdlib-docs"


def stdlib_task(stdlib_docs):
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    corpus, queries, qrels = stdlib_docs["corpus"], stdlib_docs["queries"], stdlib_docs["qrels"]

    class StdlibDocs(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="UmrStdlibDocs", description="CPython stdlib docstrings (umr's test collection).",
            reference="https://docs.python.org/3/library/", dataset={"path": "NA", "revision": "NA"},
            type="Retrieval", category="t2t", modalities=["text"], eval_splits=["test"],
            eval_langs=["eng-Latn"], main_score="ndcg_at_10", date=("2023-01-01", "2023-12-31"),
            domains=[], task_subtypes=[], license="not specified", annotations_creators="expert-annotated",
            dialect=[], sample_creation="found", bibtex_citation="")

        def load_data(self, num_proc=None, **kwargs):
            self.dataset = {"default": {"test": RetrievalSplitData(
                queries=Dataset.from_list([{"id": q["_id"], "text": q["text"]} for q in queries]),
                corpus=Dataset.from_list([{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in corpus]),
                relevant_docs=qrels, top_ranked=None)}}
            self.data_loaded = True

    return StdlibDocs()


@pytest.fixture(scope="module")
def minilm():
    from umr import load_model

    return load_model("minilm")


def test_mteb_protocol_and_scores_match_umr(minilm, tmp_path, stdlib_docs):
    from mteb.models.models_protocols import EncoderProtocol

    encoder = MtebEncoder(minilm)
    assert isinstance(encoder, EncoderProtocol)
    assert encoder.mteb_model_meta.embed_dim == minilm.dim

    result = mteb.evaluate(encoder, stdlib_task(stdlib_docs), cache=None, show_progress_bar=False)
    [task_result] = result.task_results
    mteb_scores = task_result.scores["test"][0]

    # mteb rounds its scores to 5 decimals, hence 5e-6
    ours = evaluate(minilm, [load_beir_task(DATA)], config=EvalConfig(depth=100, map_k=(10,)))["tasks"][0]["metrics"]
    assert ours["ndcg@10"] == pytest.approx(mteb_scores["ndcg_at_10"], abs=5e-6)
    assert ours["map@10"] == pytest.approx(mteb_scores["map_at_10"], abs=5e-6)
    assert ours["recall@10"] == pytest.approx(mteb_scores["recall_at_10"], abs=5e-6)


def test_encode_handles_queries_with_instructions_and_images(tmp_path):
    from PIL import Image

    from umr.models.base import Embedder

    seen = []

    class Recorder(Embedder):
        name, dim = "recorder", 4

        def _cost(self, item):
            return 1

        def _embed_batch(self, items):
            seen.extend(items)
            return np.ones((len(items), self.dim), np.float32)

    from mteb.types import PromptType

    class Meta:
        name, prompt = "SomeTask", {"query": "Find the passage."}

    encoder = MtebEncoder(Recorder())
    image = Image.new("RGB", (4, 4))
    batches = [{"text": ["a", "b"]}, {"image": [image]}, {"text": ["c"], "image": [image]}]
    out = encoder.encode(batches, task_metadata=Meta, hf_split="test", hf_subset="default",
                         prompt_type=PromptType.query)
    assert out.shape == (4, 4)
    assert [i.instruction for i in seen] == ["Find the passage."] * 4
    assert [str(i.modality) for i in seen] == ["text", "text", "image", "image,text"]
    seen.clear()
    encoder.encode([{"text": ["doc"]}], task_metadata=Meta, hf_split="test", hf_subset="default",
                   prompt_type=PromptType.document)
    assert seen[0].instruction is None and not seen[0].is_query
    sims = encoder.similarity(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
    assert np.allclose(np.asarray(sims), np.eye(2))
