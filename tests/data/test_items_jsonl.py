import json

from umr import Item, ItemError
from umr.data import read_items_jsonl


def test_reader_resolves_images_relative_to_the_file_and_keeps_metadata(tmp_path):
    rows = [
        {"id": "q", "text": "a query", "instruction": "Find it", "is_query": True},
        {"id": 7, "text": None, "image": "pics/a.png", "source": "web"},
        {"id": "c", "text": "cand", "instruction": "ignored for candidates"},
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    parsed = list(read_items_jsonl(path))
    assert [line for line, _ in parsed] == [1, 2, 3]
    q, img, cand = (item for _, item in parsed)
    assert isinstance(q, Item) and q.is_query and q.instruction == "Find it"
    assert img.id == "7" and img.image == str(tmp_path / "pics/a.png") and img.metadata == {"source": "web"}
    assert cand.instruction is None


def test_reader_reports_each_bad_line_and_goes_on(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join([
        '{"id": "ok", "text": "fine"}',
        '{"id": "broken", "text": ',
        '[1, 2]',
        '{"id": "t", "text": 5}',
        '{"id": "q", "text": "x", "is_query": "yes"}',
        '{"id": "empty", "text": null, "image": null}',
        '{"id": "last", "text": "fine too"}',
    ]))
    results = dict(read_items_jsonl(path))
    assert isinstance(results[1], Item) and isinstance(results[7], Item)
    errors = {line: r for line, r in results.items() if isinstance(r, ItemError)}
    assert sorted(errors) == [2, 3, 4, 5, 6]
    assert "invalid JSON" in str(errors[2]) and "line 2" in str(errors[2])
    assert "expected a JSON object" in errors[3].reason
    assert str(errors[4]) == "line 4, item 't': field 'text' must be a string or null, got int"
    assert "is_query" in errors[5].reason
    assert errors[6].reason == "has neither text nor image"
