"""ColQwen2 / ColQwen2.5 (colpali-engine's late-interaction retrievers): one vector per token, MaxSim."""

from .modeling_colqwen import ARCHITECTURES, ColQwenEmbedder, base_architecture
from .processing_colqwen import ColQwenProcessor

__all__ = ["ARCHITECTURES", "ColQwenEmbedder", "ColQwenProcessor", "base_architecture"]
