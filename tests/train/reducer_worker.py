"""One process of the gradient reducer's two-process test (run by torchrun): parameter ``a`` has
gradients on both processes, ``b`` on rank 0 only, ``c`` on none; writes what each ends with."""

import json
import sys
from pathlib import Path

import torch

from umr.train import collectives
from umr.train.collectives import GradientReducer

collectives.join("cpu")
rank, size = collectives.world()
a, b, c = (torch.nn.Parameter(torch.ones(n)) for n in (3, 2, 4))
reducer = GradientReducer([a, b, c], bucket_bytes=8)  # a bucket per parameter
(a * (rank + 1)).sum().backward()  # an earlier pass of the step: accumulated, not reduced yet
reducer.arm()
last = (a * 2).sum() + ((b * 5).sum() if rank == 0 else 0)
last.backward()
reducer.finish()
grads = {name: None if p.grad is None else p.grad.tolist() for name, p in (("a", a), ("b", b), ("c", c))}
(Path(sys.argv[1]) / f"{rank}.json").write_text(json.dumps(grads))
