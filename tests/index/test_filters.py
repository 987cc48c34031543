"""Regressions: filtered HNSW, Milvus filter literals, ``--where`` parsing, duplicate ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hashing
from umr.cli import main
from umr.index import Index
from umr.core.items import Item


def _rare_store(tmp_path, n=20_000, every=400, dim=32):
    from umr.index import FlatStore

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [{"id": f"d{i}", "modality": "text", "meta": {"tag": "rare" if i % every == 0 else "common"}}
               for i in range(n)]
    store = FlatStore.create(tmp_path / "hn", dim=dim, config={"method": "hnsw", "ef_search": 128})
    store.commit(records, vectors)
    store.build_hnsw(m=32, ef_construction=100)
    return store, rng.standard_normal((20, dim)).astype(np.float32)


def test_selective_filter_on_hnsw_returns_k_exact_results(tmp_path):
    """50 of 20,000 rows pass: the filtered graph walk ran dry (4-10 results, recall 0.6)."""
    from umr.index.store import Filter

    store, queries = _rare_store(tmp_path)
    flt = Filter.make(where={"tag": "rare"})
    exact = store.search(queries, 10, filter=flt, method="exact")
    graph = store.search(queries, 10, filter=flt, method="hnsw")
    assert [len(row) for row in graph] == [10] * len(queries)
    assert [[h.id for h in row] for row in graph] == [[h.id for h in row] for row in exact]
    assert all(h.record["meta"]["tag"] == "rare" for row in graph for h in row)


def test_filtered_hnsw_query_that_comes_back_short_is_answered_exactly(tmp_path, monkeypatch):
    """Even when the graph is walked with the filter, a query short of k results is redone exactly."""
    import umr.index.store.planning as store_module
    from umr.index.store import Filter

    store, queries = _rare_store(tmp_path)
    monkeypatch.setattr(store_module, "_filtered_walk_runs_dry", lambda *a: False, raising=False)
    flt = Filter.make(where={"tag": "rare"})
    graph = store.search(queries, 10, filter=flt, method="hnsw")
    assert [len(row) for row in graph] == [10] * len(queries)
    assert all(h.record["meta"]["tag"] == "rare" for row in graph for h in row)


def test_filter_values_with_non_ascii_quotes_and_backslashes(make_index):
    """Milvus rejected json.dumps's \\u escapes (MilvusException); both backends must match."""
    values = ["Zürich", 'say "hi"', "back\\slash", "a\\\"b", "日本 😀", "it's", "\\u00fc"]
    index = make_index()
    index.add([Item.candidate(text=f"cats {i}", id=f"i{i}", city=v, **{'ké"y': v}) for i, v in enumerate(values)]
              + [Item.candidate(text="cats z", id="z", city="Paris", n=3)])
    for i, v in enumerate(values):
        assert [r.id for r in index.search("cats", where={"city": v}, k=20)] == [f"i{i}"], v
        assert [r.id for r in index.search("cats", where={'ké"y': v}, k=20)] == [f"i{i}"], v
    got = {r.id for r in index.search("cats", where={"city": ["Zürich", "Paris"]}, k=20)}
    assert got == {"i0", "z"}
    assert [r.id for r in index.search("cats", where={"n": 3}, k=20)] == ["z"]


def test_milvus_filter_expression_literals():
    from umr.index.milvus import filter_expression
    from umr.index.store import Filter

    expr = filter_expression(Filter.make(where={"city": ["Zürich", 'a"b\\c'], "n": 3, "brand": None}))
    assert expr == ('(meta["brand"] is null) and '
                    '(meta["city"] == "Zürich" or json_contains(meta["city"], "Zürich") or '
                    'meta["city"] == "a\\"b\\\\c" or json_contains(meta["city"], "a\\"b\\\\c")) and '
                    '(meta["n"] == 3 or json_contains(meta["n"], 3))')
    with pytest.raises(ValueError, match="JSON object"):
        filter_expression(Filter.make(where={"loc": {"city": "Paris"}}))


def test_search_turns_a_refused_milvus_filter_into_one_line(tmp_path, capsys):
    pytest.importorskip("milvus_lite")
    index = Index.create(tmp_path / "ix", hashing.HashEmbedder(), backend="milvus", uri=str(tmp_path / "x.db"))
    index.add([Item.candidate(text="cats", id="a", city="Zürich")])
    index.close()
    assert main(["search", "--index", str(tmp_path / "ix"), "cats", "--where", "city=Zürich", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["a"]
    # a filter Milvus cannot take: one line on stderr, no traceback
    code = main(["search", "--index", str(tmp_path / "ix"), "cats", "--where", 'loc={"city": "Paris"}'])
    err = capsys.readouterr().err
    assert code != 0 and "JSON object" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_where_parsing_matches_stored_strings_numbers_and_dicts(tmp_path, capsys):
    from umr.cli.search import _parse_where

    assert _parse_where(["folder=2020"]) == {"folder": ["2020", 2020]}
    assert _parse_where(['folder="2020"']) == {"folder": "2020"}
    assert _parse_where(["folder=photos", "ok=true"]) == {"folder": "photos", "ok": ["true", True]}
    assert _parse_where(["n=[1, \"b\"]"]) == {"n": [1, "1", "b"]}
    assert _parse_where(['loc={"city": "Paris"}']) == {"loc": {"city": "Paris"}}
    assert _parse_where(["x=NaN"]) == {"x": "NaN"}

    index = Index.create(tmp_path / "ix", hashing.HashEmbedder())
    index.add([Item.candidate(text="cats a", id="a", folder="2020", loc={"city": "Paris"}),
               Item.candidate(text="cats b", id="b", folder=2021, loc={"city": "Rome"}),
               Item.candidate(text="cats c", id="c", folder="photos")])
    index.close()

    def ids(*where):
        args = ["search", "--index", str(tmp_path / "ix"), "cats", "--json", "-k", "5"]
        for w in where:
            args += ["--where", w]
        assert main(args) == 0
        return sorted(r["id"] for r in json.loads(capsys.readouterr().out))

    assert ids("folder=2020") == ["a"]          # the stored string "2020"
    assert ids("folder=2021") == ["b"]          # the stored number 2021
    assert ids('folder="2021"') == []           # a quoted string is only a string
    assert ids("folder=[2020, 2021]") == ["a", "b"]
    assert ids('loc={"city": "Paris"}') == ["a"]  # was: TypeError: unhashable type: 'dict'
    assert ids('loc={"city": "Paris"}', "folder=2020") == ["a"]


def test_python_where_compares_values_as_stored(tmp_path):
    index = Index.create(tmp_path / "ix", hashing.HashEmbedder())
    index.add([Item.candidate(text="cats a", id="a", folder="2020", loc={"city": "Paris", "n": [1, 2]})])
    assert index.search("cats", where={"folder": 2020}) == []
    assert [r.id for r in index.search("cats", where={"folder": "2020"})] == ["a"]
    assert [r.id for r in index.search("cats", where={"loc": {"n": [1, 2], "city": "Paris"}})] == ["a"]
    assert index.search("cats", where={"loc": {"city": "Paris"}}) == []


def test_duplicate_id_after_a_bad_line_is_indexed(tmp_path):
    """The first line with an id failed to load, so the second one (good) must be indexed."""
    corpus = tmp_path / "items.jsonl"
    corpus.write_text('{"id": "x", "image": "missing.png"}\n{"id": "x", "text": "the good one"}\n'
                      '{"id": "y", "text": "first y"}\n{"id": "y", "text": "second y"}\n')
    index = Index.create(tmp_path / "ix", hashing.HashEmbedder())
    summary = index.index_corpus(corpus)
    assert summary.added == 2 and sorted(index.ids()) == ["x", "y"]
    assert index.get(["x"])[0]["text"] == "the good one"
    assert index.get(["y"])[0]["text"] == "first y"
    errors = {(e["id"], e["error"]) for e in summary.errors}
    assert any(i == "x" and "not found" in why for i, why in errors)
    assert not any("the first one was indexed" in why for _, why in errors)
    dup = [why for i, why in errors if i == "y"]
    assert len(dup) == 1 and "duplicate id" in dup[0] and "this one was skipped" in dup[0]
    # a second run keeps the good x: its failing twin must not delete the stored version
    again = index.index_corpus(corpus)
    assert (again.added, again.unchanged, again.deleted) == (0, 2, 0)
    assert sorted(index.ids()) == ["x", "y"]


def _where_items():
    return [Item.candidate(text="cats a", id="a", tags=["leather", "red"], flag=True, n=1),
            Item.candidate(text="cats b", id="b", tags="red", flag=1, n=1.0),
            Item.candidate(text="cats c", id="c", tags=["blue"], brand=None, flag=False),
            Item.candidate(text="cats d", id="d", flag=0),
            Item.candidate(text="cats e", id="e", brand="acme", tags=["redder"])]


def test_where_lists_null_and_types_on_both_backends(make_index):
    """tags=red missed ["leather", "red"]; brand=None never matched; true matched 1 (15.10)."""
    index = make_index()
    index.add(_where_items())

    def ids(**where):
        return sorted(r.id for r in index.search("cats", where=where, k=10))

    assert ids(tags="red") == ["a", "b"]             # a list field holding the value, or the value
    assert ids(tags=["red", "blue"]) == ["a", "b", "c"]
    assert ids(brand=None) == ["a", "b", "c", "d"]    # null or missing
    assert ids(brand=[None, "acme"]) == ["a", "b", "c", "d", "e"]
    assert ids(flag=True) == ["a"]                    # not the number 1
    assert ids(flag=1) == ["b"]                       # not true
    assert ids(flag=False) == ["c"]
    assert ids(flag=0) == ["d"]
    assert ids(n=1) == ["a", "b"]                     # 1 and 1.0 are one JSON number
    assert ids(tags="red", flag=1) == ["b"]
    assert ids(colour="red") == []
    assert index.store.metadata_fields() >= {"tags", "flag", "n", "brand"}
    assert "colour" not in index.store.metadata_fields()


def test_cli_where_null_lists_and_a_hint_for_an_unknown_field(tmp_path, capsys):
    index = Index.create(tmp_path / "ix", hashing.HashEmbedder())
    index.add(_where_items())
    index.close()

    def run(*where):
        args = ["search", "--index", str(tmp_path / "ix"), "cats", "--json", "-k", "10"]
        for w in where:
            args += ["--where", w]
        assert main(args) == 0
        captured = capsys.readouterr()
        return sorted(r["id"] for r in json.loads(captured.out)), captured.err

    assert run("tags=red") == (["a", "b"], "")
    assert run("brand=null")[0] == ["a", "b", "c", "d"]
    assert run("flag=1")[0] == ["b"]
    assert run("flag=true")[0] == ["a"]
    got, err = run("colour=red")
    assert got == [] and "no item has metadata field 'colour'" in err and "tags" in err
    got, err = run("tags=green")  # a known field with no match: no hint
    assert got == [] and err == ""


def test_search_refuses_k_and_ef_search_below_one(make_index):
    index = make_index()
    index.add(_where_items())
    for k in (0, -3):
        with pytest.raises(ValueError, match="k must be a positive"):
            index.search("cats", k=k)
    with pytest.raises(ValueError, match="ef_search must be a positive"):
        index.search("cats", k=3, ef_search=0)
    assert len(index.search("cats", k=3, ef_search=8)) == 3


def test_booleans_found_behind_many_equal_numbers(make_index):
    """Milvus compares true equal to 1: its extra hits are dropped and more are fetched."""
    index = make_index()
    index.add([Item.candidate(text=f"cats cats {i}", id=f"one{i}", flag=1) for i in range(40)]
              + [Item.candidate(text="dogs", id="yes", flag=True)])
    assert [r.id for r in index.search("cats cats", where={"flag": True}, k=1)] == ["yes"]
    assert len(index.search("cats cats", where={"flag": 1}, k=50)) == 40
