"""Indexes and evaluation folders travel between machines whose CPUs default to other dtypes.

``UMR_CPU_BF16`` stands for the machine: ``0`` is an AVX2-only CPU (float32 by default), ``1`` one
with native bf16 (bf16-close families default to bfloat16). An index or an evaluation built on
one is searched, extended and resumed on the other without flags; a dtype chosen on purpose is
the one search loads; other weights or options are still refused, naming only what differs.

Each test builds under the run's own setting and moves to the other one: CI runs these tests
under both settings (scripts/test.sh), so both directions are checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import umr
from umr.cli import main
from umr.index import Index, ModelMismatch
from umr.core.devices import bf16_by_default

SENTENCES = [
    "The heron stands motionless in the shallow pond waiting for fish.",
    "Otters slide down the muddy river bank and splash into the water.",
    "A violin concerto in D major, played by a young soloist.",
    "The stock market fell sharply after the interest rate announcement.",
    "Bake the bread at two hundred degrees for forty minutes.",
    "The mountain trail climbs through pine forest to a glacier lake.",
    "A red bicycle leans against the wall of the bakery.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "The goalkeeper saved a penalty in the last minute of the final.",
    "Python lists grow by over-allocating their underlying array.",
    "The cathedral's stained glass windows date from the thirteenth century.",
    "Volcanic ash grounded flights across northern Europe for a week.",
    "A cup of green tea contains less caffeine than a cup of coffee.",
    "The telescope revealed four moons circling the giant planet.",
    "Knitting a scarf takes patience, wool and two long needles.",
    "The court ruled that the contract had been breached.",
    "Honey bees communicate the direction of flowers with a waggle dance.",
    "The recipe calls for three eggs, flour, sugar and butter.",
    "Glaciers carved the deep fjords along the Norwegian coast.",
    "The orchestra tuned to the oboe's A before the symphony began.",
    "Electric cars need fewer moving parts than petrol engines.",
    "The old lighthouse keeper lit the lamp every evening at dusk.",
    "Marathon runners drink water at stations every five kilometres.",
    "A thunderstorm knocked out power to half of the city.",
    "The museum displays dinosaur fossils found in the desert.",
    "Chess players memorise openings to save time on the clock.",
    "Wild salmon swim upstream to spawn in the river where they hatched.",
    "The spacecraft docked with the station after a two-day flight.",
    "Sourdough starter needs feeding with flour and water every day.",
    "The poet read her verses aloud in a crowded café.",
]
EXTRA = ["Kingfishers dive from a branch to catch small fish in the stream.",
         "The jazz trio improvised on a standard until midnight.",
         "Tax returns are due at the end of the financial year."]
QUERIES = ["a bird hunting fish in the water", "classical music performance", "baking bread at home",
           "space exploration and planets", "weather disaster"]


def _corpus(folder: Path, sentences: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(sentences):
        (folder / f"doc{i:02d}.txt").write_text(text)
    return folder


def _rankings(folder: Path) -> list[list[tuple[str, float]]]:
    """Each query's ranking of the whole corpus as ``(id, score)``, searched the way ``umr search``
    does: the recorded model loaded in this process, under this process's UMR_CPU_BF16."""
    with Index.open(folder) as index:
        return [[(hit.id, hit.score) for hit in index.search(query, k=len(index))] for query in QUERIES]


def _same_top10(got, want) -> None:
    """The same top 10 up to ties: at every rank the hit's own score, and its score in ``want``,
    are within 0.01 of ``want``'s score at that rank (two documents whose scores differ by less
    may swap); the clear leaders (top 3 here) are the same documents."""
    for mine, theirs in zip(got, want):
        reference = dict(theirs)
        assert [i for i, _ in mine[:3]] == [i for i, _ in theirs[:3]]
        for (item, score), (_, expected) in zip(mine[:10], theirs[:10]):
            assert abs(score - reference[item]) <= 0.01 and abs(reference[item] - expected) <= 0.01


def _here_and_elsewhere() -> tuple[str, str]:
    """The switch as this run has it (as ``0`` or ``1``), and the other setting: another machine."""
    here = "1" if bf16_by_default() else "0"
    return here, "0" if here == "1" else "1"


def _backend_args(backend: str, folder: Path) -> list[str]:
    if backend == "faiss":
        return []
    pytest.importorskip("milvus_lite")
    return ["--backend", "milvus", "--uri", str(folder / "vectors.db")]


@pytest.mark.dtype_sensitive
@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_an_index_built_under_one_setting_is_searched_and_extended_under_the_other(
        tmp_path, monkeypatch, capsys, backend):
    built, searched = _here_and_elsewhere()
    corpus = _corpus(tmp_path / "corpus", SENTENCES)
    ix = tmp_path / "ix"
    monkeypatch.setenv("UMR_CPU_BF16", built)
    assert main(["index", str(corpus), "--index", str(ix), "--model", "minilm", "--no-progress",
                 *_backend_args(backend, tmp_path)]) == 0
    want = _rankings(ix)

    monkeypatch.setenv("UMR_CPU_BF16", searched)  # another machine
    with Index.open(ix) as index:  # searched in this machine's default dtype: fast here, and interchangeable
        assert str(index.model.backend.dtype) == ("torch.bfloat16" if searched == "1" else "torch.float32")
    _same_top10(_rankings(ix), want)
    capsys.readouterr()
    assert main(["search", "--index", str(ix), QUERIES[0], "--json", "-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == want[0][0][0]
    # extended there too: a rerun adds the new files, keeps the others
    _corpus(corpus, SENTENCES + EXTRA)
    assert main(["index", str(corpus), "--index", str(ix), "--no-progress"]) == 0
    assert f"added {len(EXTRA)}, updated 0, unchanged {len(SENTENCES)}" in capsys.readouterr().out
    with Index.open(ix) as index:
        assert index.search(EXTRA[0], k=1)[0].id == f"corpus/doc{len(SENTENCES):02d}.txt"


@pytest.mark.parametrize("chosen", ["bfloat16", "float32"])
def test_a_chosen_dtype_is_the_one_search_loads_under_every_setting(tmp_path, monkeypatch, chosen):
    corpus = _corpus(tmp_path / "corpus", SENTENCES[:6])
    assert main(["index", str(corpus), "--index", str(tmp_path / "ix"), "--model", "minilm", "--dtype", chosen,
                 "--no-progress"]) == 0
    for setting in ("0", "1"):
        monkeypatch.setenv("UMR_CPU_BF16", setting)
        with Index.open(tmp_path / "ix") as index:
            assert str(index.model.backend.dtype) == f"torch.{chosen}"
            assert index.search(SENTENCES[2], k=1)[0].id == "corpus/doc02.txt"


def test_a_dtype_that_identifies_the_model_is_loaded_as_recorded_not_refused(tmp_path, monkeypatch):
    """A family that is not bf16-close defaults to bfloat16 on some devices (MM-Embed on a GPU):
    the index records that dtype and a CPU search loads it, rather than refusing its own model
    as changed."""
    from umr.testing import write_tiny_clip

    folder = write_tiny_clip(tmp_path / "m", seed=0)
    model = umr.load_model(folder, dtype="bfloat16")
    with Index.create(tmp_path / "ix", model, model_options={}) as index:  # as if bfloat16 had been its default
        index.add([umr.Item(text="red apples in autumn", id="a"), umr.Item(text="a violin concerto", id="b")])
        recorded = index.recorded_identity
    assert recorded.options["dtype"] == "bfloat16" and not recorded.dtype_follows_machine
    for setting in ("0", "1"):
        monkeypatch.setenv("UMR_CPU_BF16", setting)
        with Index.open(tmp_path / "ix") as index:
            assert index.search("a violin concerto", k=1)[0].id == "b"
            assert str(index.model.dtype) == "torch.bfloat16"
    with pytest.raises(ModelMismatch, match=r"dtype: 'bfloat16' vs 'float32'.* search it without --model"):
        Index.open(tmp_path / "ix", model=umr.load_model(folder))  # a float32 model is another model here


def test_a_refusal_says_what_differs_and_claims_a_change_only_when_the_files_changed(tmp_path):
    from umr.testing import write_tiny_clip

    folder = write_tiny_clip(tmp_path / "m", seed=0)
    with Index.create(tmp_path / "ix", umr.load_model(folder)) as index:
        index.add([umr.Item(text="red apples in autumn", id="a")])
        config = index.config
    # the files are the same, but this umr loads the recorded model with another max_length
    # than it was built with (as a newer version with another default would)
    with Index.open(tmp_path / "ix", writable=True) as index:
        identity = dict(config["model"]["identity"], options={**config["model"]["identity"]["options"],
                                                              "max_length": 7})
        index.store.set_config({**config, "model": {**config["model"], "identity": identity}})
    with Index.open(tmp_path / "ix") as index, pytest.raises(ModelMismatch) as refused:
        index.search("apples")
    message = str(refused.value)
    assert "max_length: 7 vs" in message and "files are unchanged" in message
    assert "changed since" not in message and "dtype" not in message
    # other weights at the recorded folder: that is a change, and the message says so
    shutil.rmtree(folder)
    write_tiny_clip(folder, seed=1)
    with Index.open(tmp_path / "ix", writable=True) as index:
        index.store.set_config(config)
    with Index.open(tmp_path / "ix") as index, pytest.raises(ModelMismatch) as refused:
        index.search("apples")
    message = str(refused.value)
    assert "weights/config files" in message and "files changed since the index was built" in message
    assert "max_length" not in message and "dtype" not in message


#: queries of the evaluation task, each with the documents (positions in SENTENCES + EXTRA) it wants
JUDGED = {"a bird hunting fish in the water": [0, 30], "classical music performance": [2, 19],
          "baking bread at home": [4, 28], "space exploration and planets": [13, 27],
          "weather disaster": [11, 23], "animals swimming in rivers": [1, 26],
          "a legal dispute in court": [15], "ingredients for a cake": [17]}


def _beir_task(folder: Path) -> Path:
    """A small BEIR-layout task over the sentences (short texts: it runs in emulated bf16 too)."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": text}) + "\n"
                                                 for i, text in enumerate(SENTENCES + EXTRA)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": text}) + "\n"
                                                  for i, text in enumerate(JUDGED)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{doc}\t1\n" for i, docs in enumerate(JUDGED.values()) for doc in docs))
    return folder


def _cache_rows(output: Path) -> int:
    (store,) = [d for d in (output / "cache").iterdir() if (d / "fps.txt").is_file()]
    return len((store / "fps.txt").read_text().split())


@pytest.mark.dtype_sensitive
def test_an_evaluation_resumes_under_the_other_setting_with_the_vectors_it_has(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from umr.data.beir import load_beir_task
    from umr.eval import EvalConfig, Evaluator

    first, then = _here_and_elsewhere()
    data = _beir_task(tmp_path / "task")
    task = load_beir_task(data)
    config = EvalConfig(show_progress=False)
    monkeypatch.setenv("UMR_CPU_BF16", first)
    reference = Evaluator(umr.load_model("minilm"), output=tmp_path / "ref", config=config).evaluate([task])
    # stopped after half the queries (the whole corpus embedded, cached)
    half = replace(task, queries=task.queries[: len(task.queries) // 2])
    Evaluator(umr.load_model("minilm"), output=tmp_path / "out", config=config).evaluate([half])
    rows = _cache_rows(tmp_path / "out")

    monkeypatch.setenv("UMR_CPU_BF16", then)  # resumed on another machine: the same model, the same folder
    resumed = Evaluator(umr.load_model("minilm"), output=tmp_path / "out", config=config).evaluate([task])
    assert _cache_rows(tmp_path / "out") == rows + len(task.queries) - len(half.queries)  # only what was missing
    (got,), (want,) = resumed["tasks"], reference["tasks"]
    assert got["metrics"] == pytest.approx(want["metrics"], abs=0.01) and want["main_score"] > 0.5

    # the command line too: a finished evaluation re-reports under the other setting
    common = ["eval", "--model", "minilm", "--benchmark", "beir", "--data", str(data), "--no-progress",
              "--output", str(tmp_path / "cli")]
    monkeypatch.setenv("UMR_CPU_BF16", first)
    assert main(common) == 0
    monkeypatch.setenv("UMR_CPU_BF16", then)
    capsys.readouterr()
    assert main(common) == 0
    assert "already done, skipped" in capsys.readouterr().err
