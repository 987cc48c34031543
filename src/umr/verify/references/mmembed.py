"""MM-Embed's references: the authors' ``modeling_nvmmembed.py`` when the checkpoint folder ships
one that runs here, else a loop that follows it literally on transformers' own modules.

The shipped script (``NVMMEmbedModel``, a ``LlavaNextForConditionalGeneration`` subclass) builds
NV-Embed-v1 from the hub by name (``config.retriever``) and merges image features with
``_merge_input_ids_with_image_features``, which transformers removed in 4.47: on transformers 5
it cannot load, and ``--reference auto`` falls back to the loop, saying why.

The loop: LLaVA-NeXT's LLaMA tokenizer with ``add_eos_token`` from the config; images converted
with ``convert("RGB")`` as transformers 4.43 (the script's) did; transformers' LLaVA-NeXT PIL
image processor, keeping the global patch as ``global_image_patch_only`` does;
``CLIPVisionModel`` and ``MistralModel`` (given a padding-only 4D mask, as NV-Embed's
``BidirectionalMistralModel`` builds it); NV-Embed's latent-attention pooling written out with
einsum from the weights. umr's fast path shares none of it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...core.items import Item
from ...models.mmembed.modeling_mmembed import NV_EMBED_V1
from .base import Reference, read_safetensors

#: the file name of the authors' script in nvidia/MM-Embed
SCRIPT = "modeling_nvmmembed.py"


def reference_tokenizer(folder: Path):
    """The tokenizer as ``NVMMEmbedModel.__init__`` sets it up: LLaVA-NeXT's LLaMA tokenizer (which
    adds ``<s>``) with ``add_eos_token`` from the config; umr's processor is not used."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_bos_token = True
    tokenizer.add_eos_token = json.loads((Path(folder) / "config.json").read_text()).get("add_eos_token", True)
    return tokenizer


def reference_instruction_length(tokenizer, prompt: str, patches: int) -> int:
    """``calculate_instruction_length``: the head before ``"\\nQuery: "`` tokenised by a plain
    tokenizer call (its specials, no truncation), plus the hard-coded ``576 - 1`` (``patches - 1``)
    if it holds ``<image>``."""
    if "\nQuery: " not in prompt:
        return 0
    head = prompt.split("\nQuery: ")[0]
    return len(tokenizer(head)["input_ids"]) + (patches - 1 if "<image>" in head else 0)


def reference_prompt(item: Item) -> str:
    """``NVMMEmbedModel.encode``'s prompt, literally."""
    if item.is_query:
        template = (f"Instruct: {item.instruction}\nQuery: <image>\n<text>" if item.instruction is not None
                    else "Query: <image>\n<text>")
    else:
        template = "<image>\n<text>"
    prompt = template if item.image is not None else template.replace("<image>\n", "")
    return prompt.replace("<text>", item.text if item.text is not None else "")


def _open_rgb(image) -> Image.Image:
    return (image if isinstance(image, Image.Image) else Image.open(str(image))).convert("RGB")


def independent_latent_attention(state: dict, cfg: dict, hidden: torch.Tensor, pool_mask: torch.Tensor):
    """NV-Embed's LatentAttentionModel written out from its weights (einsum, no umr code)."""
    p = "latent_attention_model."
    heads = cfg["num_cross_heads"]

    def layer_norm(x, name):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], 1e-5)

    x = layer_norm(hidden, p + "cross_attend_blocks.0.norm")
    ctx = layer_norm(state[p + "latents"], p + "cross_attend_blocks.0.norm_context")
    q = x @ state[p + "cross_attend_blocks.0.fn.to_q.weight"].T                    # b n (h d)
    kv = ctx @ state[p + "cross_attend_blocks.0.fn.to_kv.weight"].T                # m (2 h d)
    k, v = kv.chunk(2, dim=-1)
    b, n, inner = q.shape
    d = inner // heads
    q = q.view(b, n, heads, d)
    k = k.view(-1, heads, d)
    v = v.view(-1, heads, d)
    scores = torch.einsum("bnhd,mhd->bhnm", q, k) / d ** 0.5
    attn = torch.einsum("bhnm,mhd->bnhd", scores.softmax(-1), v).reshape(b, n, inner)
    h = attn @ state[p + "cross_attend_blocks.0.fn.to_out.weight"].T + hidden
    y = layer_norm(h, p + "cross_attend_blocks.1.norm")
    y = y @ state[p + "cross_attend_blocks.1.fn.net.0.weight"].T + state[p + "cross_attend_blocks.1.fn.net.0.bias"]
    a, gates = y.chunk(2, dim=-1)
    y = (a * torch.nn.functional.gelu(gates)) @ state[p + "cross_attend_blocks.1.fn.net.2.weight"].T \
        + state[p + "cross_attend_blocks.1.fn.net.2.bias"]
    h = y + h
    w = pool_mask.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1)


class MMEmbedReference(Reference):
    """MM-Embed's reference semantics, one item per call, on transformers' modules (see the module)."""

    def __init__(self, folder: Path, *, max_length: int = 512, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, note: str = ""):
        import transformers
        from transformers import CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralModel
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text())
        nv = self.config.get("retriever_config") or NV_EMBED_V1
        self.state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                      for k, v in read_safetensors(folder).items()}
        self.tokenizer = reference_tokenizer(folder)
        self.max_length, self.device = max_length, device
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        pre = {k: v for k, v in pre.items() if k not in ("image_processor_type", "processor_class")}
        self.image_processor = LlavaNextImageProcessorPil(**pre)

        vc = {k: v for k, v in self.config["vision_config"].items() if k != "model_type"}
        self.vision = CLIPVisionModel(CLIPVisionConfig(**vc)).eval()
        prefix = "vision_tower.vision_model."  # the checkpoint's names; transformers 5 drops "vision_model."
        flat = not any(k.startswith("vision_model.") for k in self.vision.state_dict())
        self.vision.load_state_dict({(k[len(prefix):] if flat else k[len("vision_tower."):]): v
                                     for k, v in self.state.items() if k.startswith(prefix)})
        tc = {k: v for k, v in nv["text_config"].items() if k != "model_type"}
        self.llm = MistralModel(MistralConfig(**tc, sliding_window=None)).eval()
        self.llm.load_state_dict({k[len("language_model."):]: v for k, v in self.state.items()
                                  if k.startswith("language_model.")})
        self.vision.to(device=device, dtype=dtype)
        self.llm.to(device=device, dtype=dtype)
        self.latent = nv["latent_attention_config"]
        self.patches = (vc["image_size"] // vc["patch_size"]) ** 2
        self.description = (f"umr's MM-Embed reference loop ({SCRIPT} followed literally), "
                            f"transformers {transformers.__version__}{note}")

    def tokenize(self, prompt: str) -> list[int]:
        # encode(): the processor's tokenizer call with truncation at max_length
        return self.tokenizer(prompt, max_length=self.max_length, truncation=True)["input_ids"]

    @torch.no_grad()
    def embed(self, item: Item) -> np.ndarray:
        prompt = reference_prompt(item)
        ids = torch.tensor(self.tokenize(prompt), device=self.device)
        image_id = self.config["image_token_index"]
        emb_ids = ids.clone()
        emb_ids[ids == image_id] = 0
        # the reference then swaps LLaVA-NeXT's <pad> (32001) for </s> (2) before embedding
        emb_ids[ids == self.config["pad_token_id"]] = self.tokenizer.eos_token_id
        embeds = self.llm.embed_tokens(emb_ids)
        if item.image is not None:
            # converted as transformers 4.43's convert_to_rgb converted (the script's era): convert("RGB");
            # transformers 5's would composite a colour key PIL leaves in ``info`` on white
            pixels = self.image_processor(_open_rgb(item.image), do_convert_rgb=False,
                                          return_tensors="pt")["pixel_values"][:, 0]
            out = self.vision(pixels.to(self.device, embeds.dtype), output_hidden_states=True)
            feats = out.hidden_states[self.config["vision_feature_layer"]][:, 1:]
            s = self.state
            feats = torch.nn.functional.linear(feats, s["multi_modal_projector.linear_1.weight"],
                                               s["multi_modal_projector.linear_1.bias"])
            feats = torch.nn.functional.gelu(feats)
            feats = torch.nn.functional.linear(feats, s["multi_modal_projector.linear_2.weight"],
                                               s["multi_modal_projector.linear_2.bias"])[0]
            feats = torch.cat([feats, s["image_newline"][None]])
            k = int((ids == image_id).nonzero()[0, 0])
            embeds = torch.cat([embeds[:k], feats, embeds[k + 1:]])
        n = embeds.shape[0]
        mask4d = torch.zeros(1, 1, n, n, device=self.device, dtype=embeds.dtype)  # bidirectional, one item
        hidden = self.llm(inputs_embeds=embeds[None], attention_mask=mask4d).last_hidden_state
        pool_mask = torch.ones(1, n, device=self.device)
        pool_mask[:, :reference_instruction_length(self.tokenizer, prompt, self.patches)] = 0
        vector = independent_latent_attention(self.state, self.latent, hidden, pool_mask)[0]
        return torch.nn.functional.normalize(vector.float(), dim=-1).cpu().numpy()


class MMEmbedScriptReference(Reference):
    """The folder's own ``modeling_nvmmembed.py``: ``NVMMEmbedModel.from_pretrained(folder)`` and
    its ``encode([{"txt", "img"}], is_query, instruction, max_length)["hidden_states"]``."""

    def __init__(self, folder: Path, *, max_length: int = 512, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        import transformers

        script = Path(folder) / SCRIPT
        spec = importlib.util.spec_from_file_location(f"umr_verify_nvmmembed_{abs(hash(str(script)))}", script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its classes must be findable by name (pickling, dataclasses)
        spec.loader.exec_module(module)
        self.model = module.NVMMEmbedModel.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        self.max_length = max_length
        self.description = f"{script} (the authors' script), transformers {transformers.__version__}"

    @torch.no_grad()
    def embed(self, item: Item) -> np.ndarray:
        record = {"txt": item.text} if item.text is not None else {}
        if item.image is not None:
            record["img"] = _open_rgb(item.image)
        out = self.model.encode([record], is_query=item.is_query,
                                instruction=item.instruction if item.is_query else None,
                                max_length=self.max_length)["hidden_states"]
        return torch.nn.functional.normalize(out.float(), dim=-1)[0].cpu().numpy()


def mmembed_reference(folder: Path, *, device: str, dtype: torch.dtype, max_length: int = 512) -> Reference:
    """The folder's script when it ships one that loads here, else the loop (whose description
    says why the script was passed over)."""
    folder = Path(folder)
    if not (folder / SCRIPT).is_file():
        return MMEmbedReference(folder, max_length=max_length, device=device, dtype=dtype,
                                note=f" (the folder ships no {SCRIPT})")
    try:
        return MMEmbedScriptReference(folder, max_length=max_length, device=device, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code means: use the loop, say why
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        return MMEmbedReference(folder, max_length=max_length, device=device, dtype=dtype,
                                note=f" (the folder's {SCRIPT} does not run here: {reason})")
