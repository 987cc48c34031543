"""GME's fused-modal synthesis, as a resumable pipeline (``umr synth``).

Stages, in order, each over every passage still in the running:

1. **doc2query**: the generator writes ``{"query", "answer"}`` from a passage (in-context examples
   in the prompt); a malformed reply is answered with a correction and retried, at most
   ``max_attempts`` replies in all, then reported.
2. **consistency**: the retriever embeds every passage (an index, as ``umr index`` builds it); a
   query is kept only if its own passage is in its top-k (GME: 20).
3. **dedup**: near-duplicate queries (same content words after folding case and punctuation)
   keep their first occurrence.
4. **entity**: the generator names the query's main entity and rewrites the query to refer to it
   generically; a rewrite that still names the entity is retried like a malformed reply.
5. **images**: image sources propose images for the entity; one is kept if its CLIP-style score
   against the entity's caption is at least the threshold (GME: 0.2).

Kept items become training examples of the kinds asked for (``t2it``: query -> passage + image;
``it2t``: rewritten query + image -> passage; ``it2it``: rewritten query + image -> passage + another
image), in the generic training JSONL of :mod:`umr.train.data`, with their provenance.

Every result is cached by content (:mod:`.cache`) and batches are formed over the full, ordered
list of a stage's work, seeded from their content: a killed run, started again, generates nothing
it finished and writes the same file an uninterrupted run writes. The output is written whole at
the end (atomically), so it never holds a partial or duplicated example.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from ..core.atomic import atomic_writer
from ..core.items import Item, ItemError
from ..data.corpus import read_corpus
from ..index import Index
from ..models.base import Embedder
from .cache import WorkCache
from .generator import Chat, Generator, content_key, parse_reply
from .images import Candidate, ClipScorer, ImageSource

KINDS = ("t2it", "it2t", "it2it")

DOC2QUERY_SYSTEM = ("You write search queries for passages. Reply with one JSON object with the fields "
                    "\"query\" (a question the passage answers, naming its subject) and \"answer\" "
                    "(the answer, from the passage). Reply with the JSON only.")
DOC2QUERY_EXAMPLES = [
    ("Iris pseudacorus, the yellow flag, is a flowering plant native to Europe, western Asia and "
     "northwest Africa. It grows in wetlands.",
     {"query": "Where is Iris pseudacorus native?", "answer": "Europe, western Asia and northwest Africa"}),
    ("The Golden Gate Bridge is a suspension bridge spanning the strait between San Francisco Bay and "
     "the Pacific Ocean. It opened in 1937.",
     {"query": "When did the Golden Gate Bridge open?", "answer": "1937"}),
]
ENTITY_SYSTEM = ("You rewrite search queries. Reply with one JSON object with the fields \"entity\" (the "
                 "query's main entity, as named in it) and \"rewritten\" (the query referring to the entity "
                 "generically, as if it were shown in a picture, without its name). Reply with the JSON only.")
ENTITY_EXAMPLES = [
    ("Where is Iris pseudacorus native?", {"entity": "Iris pseudacorus", "rewritten": "Where is this plant native?"}),
    ("When did the Golden Gate Bridge open?",
     {"entity": "Golden Gate Bridge", "rewritten": "When did this bridge open?"}),
]
INSTRUCTIONS = {
    "t2it": "Retrieve an image and passage that answer the question.",
    "it2t": "Retrieve a passage that answers the question about the image.",
    "it2it": "Retrieve an image and passage that answer the question about the image.",
}
_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset("a an the of in on at to is are was were be by for and or what which who whom whose "
                       "where when why how does do did this that these those it its with from as".split())


@dataclass
class SynthConfig:
    """What ``umr synth`` does; ``cache`` defaults to ``<output>.cache``."""

    source: str
    output: str
    kinds: Sequence[str] = KINDS
    limit: int | None = None
    seed: int = 0
    top_k: int = 20
    image_threshold: float = 0.2
    caption: str = "a photo of {entity}"
    max_attempts: int = 3
    batch_size: int = 8
    max_passage_chars: int = 2000
    cache: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"kinds are some of {', '.join(KINDS)}; got {', '.join(self.kinds) or 'none'}")
        if self.max_attempts < 1 or self.top_k < 1 or self.batch_size < 1:
            raise ValueError("max_attempts, top_k and batch_size must be at least 1")

    @property
    def cache_folder(self) -> Path:
        return Path(self.cache) if self.cache else Path(str(self.output) + ".cache")


@dataclass
class Summary:
    """Per stage, how many went in and why the others were filtered; examples by kind; errors."""

    stages: dict[str, Counter] = field(default_factory=dict)
    examples: Counter = field(default_factory=Counter)
    errors: list[ItemError] = field(default_factory=list)
    #: replies the generator wrote in this run (cached ones not counted)
    generated: int = 0

    def count(self, stage: str, outcome: str, n: int = 1) -> None:
        self.stages.setdefault(stage, Counter())[outcome] += n

    def lines(self) -> list[str]:
        out = []
        for stage, counts in self.stages.items():
            parts = [f"{counts.get('kept', 0)} kept"] + [f"{n} {why}" for why, n in sorted(counts.items())
                                                          if why != "kept"]
            out.append(f"{stage}: " + ", ".join(parts))
        out.append("examples: " + (", ".join(f"{n} {k}" for k, n in sorted(self.examples.items())) or "none"))
        if self.errors:
            out.append(f"{len(self.errors)} items reported (see the errors file)")
        return out


@dataclass
class _Work:
    """One passage's way through the stages."""

    pid: str
    passage: Item
    #: the corpus reader's content fingerprint of the passage
    fingerprint: str = ""
    query: str = ""
    answer: str = ""
    rank: int | None = None
    entity: str = ""
    rewritten: str = ""
    images: list[tuple[Candidate, float]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)


def synthesize(config: SynthConfig, *, generator: Generator, retriever, scorer: ClipScorer,
               image_sources: Sequence[ImageSource]) -> Summary:
    """Run every stage over ``config.source`` and write ``config.output``; see the module docstring."""
    run = _Run(config, generator, retriever, scorer, image_sources)
    try:
        return run.all()
    finally:
        run.cache.close()


class _Run:
    def __init__(self, config: SynthConfig, generator: Generator, retriever, scorer: ClipScorer,
                 image_sources: Sequence[ImageSource]):
        self.config = config
        self.generator = generator
        self.retriever = retriever
        self.scorer = scorer
        self.sources = list(image_sources)
        self.cache = WorkCache(config.cache_folder / "work.sqlite")
        self.summary = Summary()

    def all(self) -> Summary:
        work = self.read_passages()
        work = self.doc2query(work)
        work = self.consistency(work)
        work = self.dedup(work)
        work = self.entities(work)
        work = self.images(work)
        self.write(work)
        errors = Path(str(self.config.output) + ".errors.jsonl")
        errors.write_text("".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in self.summary.errors),
                          encoding="utf-8")
        return self.summary

    def report(self, stage: str, item_id: str | None, reason: str, *, line: int | None = None) -> None:
        self.summary.errors.append(ItemError(item_id, f"{stage}: {reason}", line=line))
        self.summary.count(stage, "reported")

    def bar(self, total: int, stage: str):
        return tqdm(total=total, desc=f"synth {stage}", unit="item", dynamic_ncols=True,
                    disable=not self.config.progress or not sys.stderr.isatty())

    # -- reading -----------------------------------------------------------------------------

    def read_passages(self) -> list[_Work]:
        work: list[_Work] = []
        for entry in read_corpus(self.config.source):
            if self.config.limit is not None and len(work) >= self.config.limit:
                break
            if isinstance(entry, ItemError):
                self.report("read", entry.item_id, entry.reason, line=entry.line)  # a bad record: by id or line
                continue
            try:
                item = entry.load()
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the rest
                self.report("read", entry.id, getattr(exc, "reason", None) or str(exc).splitlines()[0])
                continue
            if not (item.text or "").strip():
                self.summary.count("read", "no text")
                continue
            work.append(_Work(entry.id, item, entry.fingerprint))
        self.summary.count("read", "kept", len(work))
        self._all = work
        return work

    # -- generation --------------------------------------------------------------------------

    def generate_json(self, stage: str, work: list[_Work], chat_of: Callable[[_Work], Chat],
                      fields: Sequence[str], problem: Callable[[_Work, dict], str | None]) -> dict[str, dict]:
        """Valid replies by passage id; malformed ones are answered with a correction and retried."""
        chats = {w.pid: chat_of(w) for w in work}
        valid: dict[str, dict] = {}
        last: dict[str, str] = {}
        pending = list(work)
        with self.bar(len(work), stage) as bar:
            for attempt in range(1, self.config.max_attempts + 1):
                replies = self.replies(stage, [(w.pid, chats[w.pid]) for w in pending])
                retry = []
                for w in pending:
                    if w.pid not in replies:
                        continue  # the generator failed on it: reported
                    reply = replies[w.pid]
                    parsed = parse_reply(reply, fields)
                    why = f"not a JSON object with {', '.join(fields)}" if parsed is None else problem(w, parsed)
                    if why is None:
                        valid[w.pid] = parsed
                        w.attempts[stage] = attempt
                        bar.update(1)
                        continue
                    last[w.pid] = f"{why}: {reply[:80]!r}"
                    chats[w.pid] = chats[w.pid] + [
                        {"role": "assistant", "content": reply},
                        {"role": "user", "content": f"That reply was {why}. Reply with only the JSON object "
                                                    f"with the fields {', '.join(fields)}."}]
                    retry.append(w)
                pending = retry
                if not pending:
                    break
            for w in pending:
                self.report(stage, w.pid, f"no valid reply after {self.config.max_attempts} attempts ({last[w.pid]})")
                bar.update(1)
        return valid

    def replies(self, stage: str, requests: list[tuple[str, Chat]]) -> dict[str, str]:
        """The generator's reply to each request, from the cache or generated in seeded batches."""
        settings = self.generator.decoding.key()
        keys = [content_key(stage, self.generator.name, settings, json.dumps(chat, ensure_ascii=False))
                for _, chat in requests]
        cached = self.cache.get_many(keys)
        out: dict[str, str] = {}
        size = self.config.batch_size
        for start in range(0, len(requests), size):
            batch = list(zip(keys[start:start + size], requests[start:start + size]))
            todo = [(key, pid, chat) for key, (pid, chat) in batch if key not in cached]
            fresh: dict[str, str] = {}
            if todo:
                fresh = self._generate(stage, todo)
                self.cache.put_many(fresh)
                self.summary.generated += len(fresh)
            for key, (pid, _) in batch:
                if key in cached or key in fresh:
                    out[pid] = cached[key] if key in cached else fresh[key]
        return out

    def _generate(self, stage: str, todo: list[tuple[str, str, Chat]]) -> dict[str, str]:
        """Replies by key; a failing batch is retried item by item, and a failing item reported."""
        seed = int(content_key(self.config.seed, *(key for key, _, _ in todo))[:8], 16)
        try:
            return {key: reply for (key, _, _), reply in
                    zip(todo, self.generator.generate([chat for _, _, chat in todo], seed=seed))}
        except Exception as exc:  # noqa: BLE001 - find the item that fails, keep the rest
            if len(todo) == 1:
                self.report(stage, todo[0][1], f"generation failed: {type(exc).__name__}: {exc}")
                return {}
        out: dict[str, str] = {}
        for one in todo:
            out.update(self._generate(stage, [one]))
        return out

    def doc2query(self, work: list[_Work]) -> list[_Work]:
        def chat(w: _Work) -> Chat:
            messages = [{"role": "system", "content": DOC2QUERY_SYSTEM}]
            for passage, reply in DOC2QUERY_EXAMPLES:
                messages += [{"role": "user", "content": f"Passage: {passage}"},
                             {"role": "assistant", "content": json.dumps(reply)}]
            text = (w.passage.text or "")[:self.config.max_passage_chars]
            return messages + [{"role": "user", "content": f"Passage: {text}"}]

        valid = self.generate_json("doc2query", work, chat, ("query", "answer"), lambda w, reply: None)
        for w in work:
            if w.pid in valid:
                w.query, w.answer = valid[w.pid]["query"], valid[w.pid]["answer"]
        return self._kept("doc2query", [w for w in work if w.pid in valid])

    def entities(self, work: list[_Work]) -> list[_Work]:
        def chat(w: _Work) -> Chat:
            messages = [{"role": "system", "content": ENTITY_SYSTEM}]
            for query, reply in ENTITY_EXAMPLES:
                messages += [{"role": "user", "content": f"Query: {query}"},
                             {"role": "assistant", "content": json.dumps(reply)}]
            return messages + [{"role": "user", "content": f"Query: {w.query}"}]

        def problem(w: _Work, reply: dict) -> str | None:
            if reply["entity"].casefold() in reply["rewritten"].casefold():
                return "a rewrite that still names the entity"
            return None

        valid = self.generate_json("entity", work, chat, ("entity", "rewritten"), problem)
        for w in work:
            if w.pid in valid:
                w.entity, w.rewritten = valid[w.pid]["entity"], valid[w.pid]["rewritten"]
        return self._kept("entity", [w for w in work if w.pid in valid])

    def _kept(self, stage: str, kept: list[_Work]) -> list[_Work]:
        self.summary.count(stage, "kept", len(kept))
        return kept

    # -- filters -----------------------------------------------------------------------------

    def consistency(self, work: list[_Work]) -> list[_Work]:
        """Keep a query only if the retriever ranks its own passage in the top-k of all passages."""
        if not work:
            return work
        index, corpus = self._passage_index()
        name = _model_key(self.retriever)
        keys = [content_key("consistency", name, corpus, self.config.top_k, w.pid, w.query) for w in work]
        cached = self.cache.get_many(keys)
        todo = [(key, w) for key, w in zip(keys, work) if key not in cached]
        with self.bar(len(work), "consistency") as bar:
            bar.update(len(work) - len(todo))
            for start in range(0, len(todo), self.config.batch_size * 4):
                part = todo[start:start + self.config.batch_size * 4]
                vectors = self.retriever.encode_queries([w.query for _, w in part], show_progress_bar=False)
                hits = index.search_vectors(vectors, k=self.config.top_k)
                ranks = {key: next((h.rank for h in row if h.id == w.pid), 0) for (key, w), row in zip(part, hits)}
                self.cache.put_many(ranks)
                cached.update(ranks)
                bar.update(len(part))
        kept = []
        for key, w in zip(keys, work):
            w.rank = cached[key] or None
            if w.rank is None:
                self.summary.count("consistency", f"passage not in top-{self.config.top_k}")
            else:
                kept.append(w)
        return self._kept("consistency", kept)

    def _passage_index(self) -> tuple:
        """Every passage embedded by the retriever, in an index under the cache folder (resumable)."""
        passages = [Item.candidate(text=w.passage.text, image=w.passage.image, id=w.pid) for w in self._all]
        corpus = content_key(*(f"{w.pid}\x1e{w.fingerprint}" for w in self._all))
        folder = self.config.cache_folder / f"retriever-{content_key(_model_key(self.retriever), corpus)[:16]}"
        if Index.exists(folder):
            index = Index.open(folder, model=self.retriever, writable=True)
        else:
            index = Index.create(folder, self.retriever)
        summary = index.add(passages)
        for failure in summary.errors + summary.skipped:
            self.report("consistency", failure.get("id", "?"),
                        f"passage not embedded: {failure.get('error') or failure.get('reason')}")
        return index, corpus

    def dedup(self, work: list[_Work]) -> list[_Work]:
        seen: set[frozenset] = set()
        kept = []
        for w in work:
            words = frozenset(word for word in _WORD.findall(w.query.casefold()) if word not in _STOPWORDS)
            if words in seen:
                self.summary.count("dedup", "near-duplicate query")
                continue
            seen.add(words)
            kept.append(w)
        return self._kept("dedup", kept)

    def images(self, work: list[_Work]) -> list[_Work]:
        """Score every proposed image against the entity's caption; keep those at the threshold or above."""
        kept = []
        with self.bar(len(work), "images") as bar:
            for w in work:
                bar.update(1)
                try:
                    candidates = list(dict.fromkeys(c for s in self.sources for c in s.candidates(w.entity, w.passage)))
                except Exception as exc:  # noqa: BLE001
                    self.report("images", w.pid, f"image source failed: {type(exc).__name__}: {exc}")
                    continue
                scores = self._scores(w, candidates)
                w.images = sorted(((c, s) for c, s in zip(candidates, scores)
                                   if s is not None and s >= self.config.image_threshold), key=lambda cs: -cs[1])
                below = sum(1 for s in scores if s is not None and s < self.config.image_threshold)
                if below:
                    self.summary.count("images", "images under the threshold", below)
                if w.images:
                    kept.append(w)
                else:
                    self.summary.count("images", "no image kept")
        return self._kept("images", kept)

    def _scores(self, w: _Work, candidates: list[Candidate]) -> list[float | None]:
        caption = self.config.caption.format(entity=w.entity)
        keys = []
        for c in candidates:
            try:
                digest = content_key(Path(c.path).read_bytes())
            except OSError as exc:
                self.report("images", w.pid, f"image {c.path} not read: {exc.strerror or exc}")
                digest = None
            keys.append(None if digest is None else content_key("score", self.scorer.name, caption, digest))
        cached = self.cache.get_many(k for k in keys if k is not None)
        todo = [(k, c) for k, c in zip(keys, candidates) if k is not None and k not in cached]
        if todo:
            fresh = dict(zip((k for k, _ in todo), self.scorer.scores(caption, [c.path for _, c in todo])))
            for (k, c) in todo:
                if fresh[k] is None:
                    self.report("images", w.pid, f"image {c.path} could not be embedded")
            self.cache.put_many({k: s for k, s in fresh.items() if s is not None})
            cached.update(fresh)
        return [None if k is None else cached.get(k) for k in keys]

    # -- output ------------------------------------------------------------------------------

    def write(self, work: list[_Work]) -> None:
        output = Path(self.config.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(output, text=True) as handle:
            for w in work:
                for example in self.examples(w):
                    handle.write(json.dumps(example, ensure_ascii=False) + "\n")
                    self.summary.examples[example["kind"]] += 1

    def examples(self, w: _Work) -> list[dict]:
        (image, score), *others = w.images
        second = next(((c, s) for c, s in others if c.path != image.path), None)
        text = w.passage.text
        provenance = {"source_id": w.pid, "generator": self.generator.name, "retriever": _model_key(self.retriever),
                      "scorer": self.scorer.name, "answer": w.answer, "entity": w.entity, "query": w.query,
                      "retrieval_rank": w.rank, "image_score": round(score, 6), "image_origin": image.origin,
                      "attempts": w.attempts}
        shaped = {
            "t2it": ({"text": w.query}, {"text": text, "image": image.path}),
            "it2t": ({"text": w.rewritten, "image": image.path}, {"text": text}),
            "it2it": None if second is None else ({"text": w.rewritten, "image": image.path},
                                                  {"text": text, "image": second[0].path}),
        }
        out = []
        for kind in self.config.kinds:
            if shaped[kind] is None:
                self.summary.count("output", f"{kind}: no second image")
                continue
            query, positive = shaped[kind]
            extra = {"positive_image_score": round(second[1], 6)} if kind == "it2it" else {}
            out.append({"id": content_key(kind, w.pid, w.query)[:16], "kind": kind, "source": f"synth-{kind}",
                        "query": {**query, "instruction": INSTRUCTIONS[kind]},
                        "positive": {"id": w.pid, **positive}, "negatives": [],
                        "provenance": {**provenance, **extra}})
        return out


def _model_key(model: Embedder) -> str:
    return model.identity.key() if model.identity is not None else model.name
