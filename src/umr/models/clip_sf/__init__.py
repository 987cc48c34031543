"""CLIP-SF (UniIR's score-fusion CLIP, ``clip-sf-large``) and plain CLIP / SigLIP dual encoders."""

from .modeling_clip_sf import ClipSfEmbedder, hf_to_uniir, uniir_to_hf
from .processing_clip_sf import ImageTransform, item_text, uniir_format

__all__ = ["ClipSfEmbedder", "ImageTransform", "hf_to_uniir", "item_text", "uniir_format", "uniir_to_hf"]
