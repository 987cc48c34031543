"""The synthetic text that the tiny fixtures' tokenizers are trained on (offline, deterministic).

One word list for every family, so the tiny GME, MM-Embed and CLIP tokenizers all cover the
words tests and examples use.
"""

from __future__ import annotations

import random

WORDS = ("a an the of to in on with for by from and or not is are was were be this that these those "
         "image photo picture text query document find retrieve match given describe caption "
         "dog cat car truck bird flower tree house street city river mountain sky cloud sea beach "
         "red green blue yellow black white small large old new happy running sitting standing "
         "man woman child people group table chair window door road bridge train plane boat "
         "what which where when who how why there many one two three four five wikipedia news fashion "
         "helpful assistant you are system user instruct question answer relevant passage article").split()


def synthetic_sentences(seed: int, lines: int = 400) -> list[str]:
    """``lines`` short sentences drawn from :data:`WORDS` (some with a number), the same for a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 2025)))
        sentence = " ".join(words)
        out.append(sentence[:1].upper() + sentence[1:] + rng.choice([".", "?", "!", ",", ":", ""]))
    return out
