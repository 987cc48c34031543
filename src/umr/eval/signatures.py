"""What a finished task depends on: the model, the config, the task's queries, qrels and pool.

A task file whose signature matches is reused by the next run; anything that changes a score
changes the signature.
"""

from __future__ import annotations

import hashlib
import json

from ..data.tasks import RetrievalTask
from .cache import fingerprint
from .scoring import EvalConfig, headline_metric


def pool_digest(candidates) -> str:
    """The pool's content: ids, texts and images (a path, or an in-memory image's bytes/pixels)."""
    h = hashlib.sha1()
    for cand in candidates:
        image = cand.image
        image_key = image if isinstance(image, str) else type(image) if image is None else fingerprint(cand)
        failed = "" if cand.error is None else f"\x00{cand.error}"  # why a bad record failed is content too
        h.update(f"{cand.id}\x00{cand.text}\x00{image_key}{failed}\x01".encode("utf-8", "replace"))
    return h.hexdigest()


def task_signature(task: RetrievalTask, model_key: str, config: EvalConfig, pool: str) -> str:
    """The signature of ``task`` scored by ``model_key`` under ``config``; ``pool`` is its
    candidates' :func:`pool_digest`."""
    h = hashlib.sha1()
    h.update(model_key.encode())
    h.update(config.signature().encode())
    h.update(task.pool.encode())
    h.update(headline_metric(task.headline)[0].encode())
    h.update(f"{task.average}:{task.ignore_identical_ids}".encode())
    for item in task.queries:
        h.update(item.id.encode() + fingerprint(item).encode())
    h.update(pool.encode())
    for qid in sorted(task.qrels):
        h.update(json.dumps([qid, sorted(task.qrels[qid].items())]).encode())
    return h.hexdigest()[:16]
