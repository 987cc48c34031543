"""Fused-modal training data synthesis after GME (``umr synth``): Doc2Query, a retrieval consistency
filter, entity rewriting and entity images, written as ``umr train``'s generic training JSONL.

Read :mod:`.pipeline` first; :mod:`.generator` (the generator contract and its transformers
loader), :mod:`.images` (image sources and the CLIP-style filter), :mod:`.cache` (durable
resumption).
"""

from .generator import Decoding, Generator, HFGenerator, load_generator, parse_reply
from .images import Candidate, ClipScorer, ImageCollection, ImageSource, OwnImages, TextToImage
from .pipeline import KINDS, Summary, SynthConfig, synthesize

__all__ = ["KINDS", "Candidate", "ClipScorer", "Decoding", "Generator", "HFGenerator", "ImageCollection",
           "ImageSource", "OwnImages", "Summary", "SynthConfig", "TextToImage", "load_generator", "parse_reply",
           "synthesize"]
