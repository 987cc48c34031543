"""Generated sentences whose topics overlap (so neighbours exist): the real corpus that compact-vector
tests embed with minilm."""

from __future__ import annotations

import numpy as np

SUBJECTS = ["the doctor", "a teacher", "my neighbour", "the fisherman", "an engineer", "the council", "a chef",
            "the students", "a journalist", "the farmer", "an astronaut", "the gardener"]
VERBS = ["repaired", "painted", "sold", "studied", "photographed", "designed", "lost", "found", "cleaned", "tested",
         "cooked", "translated"]
OBJECTS = ["the red bicycle", "an old violin", "the garden", "a satellite", "the manuscript", "a wooden boat",
           "the vaccine", "a tiny camera", "the cathedral", "a solar panel", "the secret recipe", "a frozen lake"]
PLACES = ["in Paris", "near the harbour", "at the market", "in the mountains", "after the storm", "on the train",
          "at midnight", "in the kitchen"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences, always the same for a seed."""
    rng = np.random.default_rng(seed)
    texts: dict[str, None] = {}
    while len(texts) < n:
        texts.setdefault(f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                         f"{rng.choice(PLACES)}.")
    return list(texts)
