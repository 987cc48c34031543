"""Embedding on Ray: a pool of actors, each loading the model once, fed chunks of items.

Chunks go out to the actors in turn (a few queued per actor) and their results come back in
chunk order, so the index commits exactly as a single-process run does. An actor whose
process dies is restarted by Ray (the model loads again) and its unfinished chunk is run again:
results are only committed once they are back, and commits are upserts by id, so nothing is
lost or stored twice. A killed driver leaves the index as any killed ``umr index`` does; the
next run embeds what is missing. A late-interaction model's results (a
:class:`~umr.models.multivector.MultiVectorResult`: a list of ``(n_tokens, dim)`` matrices, ragged)
travel back the same way: Ray pickles whatever ``embed`` returns.

``address`` is ``None`` (a local Ray started here, or the one ``RAY_ADDRESS`` names), ``auto``
(a running local cluster) or ``ray://head:10001`` (a remote cluster through Ray Client).
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..core.devices import cpu_switch_environment
from ..core.items import Item
from ..core.results import EmbedResult

#: chunks queued per actor, so an actor never waits for the driver
_IN_FLIGHT_PER_WORKER = 2


class _ModelActor:
    """One model, loaded once when the actor starts (and again if Ray restarts it), under the
    driver's ``UMR_CPU_BF16`` (``environment``): a cluster's workers do not inherit the driver's
    environment, and the switch decides the model's default dtype."""

    def __init__(self, factory: Callable[[], Any], environment: dict[str, str]):
        os.environ.update(environment)
        self.model = factory()

    def embed(self, items: list[Item], batch_size: int | None) -> EmbedResult:
        return self.model.embed(items, batch_size=batch_size, show_progress_bar=False, on_error="skip")


class RayEmbedder:
    """A :class:`~umr.index.embedding.ChunkEmbedder` on ``workers`` Ray actors.

    ``factory`` builds the model inside each actor (``functools.partial(load_model, name, ...)``);
    it must be importable there (a registered model family, or a module on the workers' path).
    """

    def __init__(self, factory: Callable[[], Any], *, workers: int = 2, gpus_per_worker: float = 0,
                 cpus_per_worker: float = 1, address: str | None = None):
        import ray

        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        actor = ray.remote(max_restarts=-1, max_task_retries=-1)(_ModelActor)
        options = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker}
        environment = cpu_switch_environment()
        self.actors = [actor.options(**options).remote(factory, environment) for _ in range(workers)]

    def map(self, chunks: Iterable[Sequence[Item]], *, batch_size: int | None = None) -> Iterator[EmbedResult]:
        import ray

        pending: deque = deque()
        limit = _IN_FLIGHT_PER_WORKER * len(self.actors)
        for number, items in enumerate(chunks):
            actor = self.actors[number % len(self.actors)]
            pending.append(actor.embed.remote(list(items), batch_size))
            if len(pending) >= limit:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()

    def __enter__(self) -> "RayEmbedder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
