"""What one running server holds, and the steps every route shares: refusals that name the
input at fault, and embedding through the batcher."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..core.items import Item
from .batcher import Embedded, MicroBatcher
from .security import Limits, RequestRefused, Security


@dataclass
class Server:
    """What one running server holds: the model (behind its batcher), the index and the reranker."""

    model: Any
    index: Any = None
    reranker: Any = None
    limits: Limits = field(default_factory=Limits)
    security: Security = field(default_factory=Security)
    batching: bool = True
    window_ms: float = 2.0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        self.batcher = MicroBatcher(self.model, window_ms=self.window_ms, enabled=self.batching,
                                    torch_threads=self.torch_threads)
        #: index reads and writes take turns (the FAISS store is not safe to write while read)
        self.index_lock = threading.Lock()

    def need_index(self):
        if self.index is None:
            raise RequestRefused(404, "this server has no index: start it with --index DIR")
        return self.index

    async def in_index(self, fn, *args):
        """``fn(*args)`` under the index lock, off the event loop."""
        def locked():
            with self.index_lock:
                return fn(*args)
        return await asyncio.to_thread(locked)


@contextmanager
def naming(where: str):
    """A refusal while one input of a request is read names that input (``input 2: ...``): as
    OpenAI's API does, one bad input refuses the whole request, saying which one it is."""
    try:
        yield
    except RequestRefused as exc:
        raise RequestRefused(exc.status, f"{where}: {exc}") from None


def check_items(items: list[Item], names: list[str]) -> None:
    """400 naming the first item that cannot be embedded as it is (no text and no image)."""
    for item, name in zip(items, names):
        if item.problem is not None:
            raise RequestRefused(400, f"{name}: {item.problem}")


def one_vector_per_input(model) -> None:
    """400 (one line) for a late-interaction model on a route that answers one vector per input
    (OpenAI's and Cohere's embeddings): it makes one vector per token, which those shapes cannot
    carry; vLLM's ``/pooling`` shape does (``token_embed``), and ``umr embed`` writes them to a file."""
    if model.multi_vector:
        raise RequestRefused(400, f"{model.name} is a late-interaction (multi-vector) model: it makes one vector "
                                  f"per token, not one per input; POST /pooling with task token_embed returns them "
                                  f"(vLLM's shape), umr embed writes them to a .npz, POST /v1/search searches its index")


async def embed_or_refuse(server: Server, items: list[Item], names: list[str]) -> Embedded:
    """The items' vectors, or 400 naming the first one the model could not embed (``names[i]``
    labels item ``i``): nothing of a request is embedded unless all of it is."""
    embedded = await server.batcher.embed(items)
    if embedded.result.errors:
        err = embedded.result.errors[0]
        raise RequestRefused(400, f"{names[err.index]}: {err.reason}")
    return embedded
