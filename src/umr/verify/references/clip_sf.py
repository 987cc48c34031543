"""CLIP-SF's references: UniIR's ``CLIPScoreFusion.encode_multimodal_input`` re-done on OpenAI
CLIP's own layout, and transformers' CLIP / SigLIP for plain folders, both with UniIR's text rule
and fusion rule (the sum of the towers' raw projections, normalised).

The UniIR loop reads the ``.pth`` state dict straight (``visual.conv1``,
``transformer.resblocks.N.attn`` with packed ``in_proj_weight``, ``x @ proj``; OpenAI's
``clip/model.py``), preprocesses as OpenAI's torchvision transform does (redone in PIL: bicubic
resize of the short side, a centre crop rounded as torchvision rounds it) and formats a query as
UniIR's ``mbeir_dataset.py`` does (``format_string(f"{instruction} {query_txt}")``). UniIR itself
cannot be installed (it is a research repository, not a package); its model is OpenAI CLIP plus
this fusion, which is all this loop computes.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...core.items import Item
from ...models.clip_sf.modeling_clip_sf import load_uniir_state, resolve_checkpoint
from .base import Reference

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def reference_format_string(s: str | None) -> str:
    """UniIR's data/preprocessing/utils.py ``format_string``."""
    s = (s or "").replace("\r", "").strip().strip('"')
    if s:
        s = s[0].upper() + s[1:]
        s = s + "." if s[-1] not in [".", "?", "!"] else s
    return s


def uniir_text(item: Item) -> str:
    """The text UniIR gives the text tower: a query's instruction in front, then ``format_string``."""
    if item.is_query and item.instruction:
        return reference_format_string(f"{item.instruction} {item.text or ''}")
    return reference_format_string(item.text or "")


def openai_clean(text: str) -> str:
    """``clip.tokenize``'s cleaning: ``ftfy.fix_text`` (not installed here), ``html.unescape``
    twice, strip, whitespace runs collapsed."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


def _open_rgb(image) -> Image.Image:
    return (Image.open(str(image)) if not isinstance(image, Image.Image) else image).convert("RGB")


class UniIRClipSfReference(Reference):
    """UniIR CLIPScoreFusion on OpenAI CLIP's layout, straight from the ``.pth`` state dict."""

    def __init__(self, folder: Path, pth: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 trust_checkpoint: bool = False):
        import transformers
        from transformers import AutoTokenizer

        folder = Path(folder)
        self.s = {k: v.to(device=device, dtype=dtype) for k, v in
                  load_uniir_state(Path(pth), trust_checkpoint=trust_checkpoint).items()}
        cfg = json.loads((folder / "config.json").read_text())
        self.text_heads = cfg["text_config"]["num_attention_heads"]
        self.vision_heads = cfg["vision_config"]["num_attention_heads"]
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.eot = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.n_px = int(round((self.s["visual.positional_embedding"].shape[0] - 1) ** 0.5)) \
            * self.s["visual.conv1.weight"].shape[-1]
        self.device, self.dtype = device, dtype
        self.description = (f"umr's UniIR CLIP-SF reference loop (CLIPScoreFusion on OpenAI CLIP's layout, "
                            f"{Path(pth).name}), transformers {transformers.__version__} (tokenizer only)")

    def _ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.s[name + ".weight"], self.s[name + ".bias"], 1e-5)

    def _blocks(self, x, prefix, heads, causal):
        n = len({k.split(".")[len(prefix.split(".")) - 1] for k in self.s if k.startswith(prefix)})
        mask = (torch.full((x.shape[0], x.shape[0]), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
                if causal else None)
        for i in range(n):
            p = f"{prefix}{i}."
            h = self._ln(x, p + "ln_1")[:, None]  # L, N=1, E (nn.MultiheadAttention's layout)
            attn, _ = F.multi_head_attention_forward(
                h, h, h, h.shape[-1], heads, self.s[p + "attn.in_proj_weight"], self.s[p + "attn.in_proj_bias"],
                None, None, False, 0.0, self.s[p + "attn.out_proj.weight"], self.s[p + "attn.out_proj.bias"],
                training=False, need_weights=False, attn_mask=mask)
            x = x + attn[:, 0]
            h = self._ln(x, p + "ln_2") @ self.s[p + "mlp.c_fc.weight"].T + self.s[p + "mlp.c_fc.bias"]
            h = h * torch.sigmoid(1.702 * h)  # QuickGELU
            x = x + h @ self.s[p + "mlp.c_proj.weight"].T + self.s[p + "mlp.c_proj.bias"]
        return x

    def encode_text(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(openai_clean(text))["input_ids"]
        context = self.s["positional_embedding"].shape[0]
        if len(ids) > context:  # clip.tokenize(..., truncate=True): cut, and end with EOT
            ids = ids[:context]
            ids[-1] = self.eot
        x = self.s["token_embedding.weight"][ids] + self.s["positional_embedding"][: len(ids)]
        x = self._ln(self._blocks(x, "transformer.resblocks.", self.text_heads, causal=True), "ln_final")
        return x[ids.index(self.eot)] @ self.s["text_projection"]

    def preprocess(self, image) -> torch.Tensor:
        # clip.load's _transform: Resize(n_px, BICUBIC), CenterCrop(n_px), ToTensor, Normalize (torchvision)
        image = _open_rgb(image)
        w, h = image.size
        size = (self.n_px, int(self.n_px * h / w)) if w <= h else (int(self.n_px * w / h), self.n_px)
        image = image.resize(size, Image.BICUBIC)
        w, h = image.size
        top, left = int(round((h - self.n_px) / 2.0)), int(round((w - self.n_px) / 2.0))
        image = image.crop((left, top, left + self.n_px, top + self.n_px))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - torch.tensor(OPENAI_MEAN)[:, None, None]) / torch.tensor(OPENAI_STD)[:, None, None]

    def encode_image(self, image) -> torch.Tensor:
        x = self.preprocess(image)[None].to(self.device, self.dtype)
        w = self.s["visual.conv1.weight"]
        x = F.conv2d(x, w, stride=w.shape[-1])[0].flatten(1).T  # grid**2, width
        x = torch.cat([self.s["visual.class_embedding"][None], x]) + self.s["visual.positional_embedding"]
        x = self._ln(x, "visual.ln_pre")
        x = self._blocks(x, "visual.transformer.resblocks.", self.vision_heads, causal=False)
        return self._ln(x[0], "visual.ln_post") @ self.s["visual.proj"]

    @torch.no_grad()
    def embed(self, item: Item) -> np.ndarray:
        text = uniir_text(item)
        txt_mask, img_mask = (1.0 if text else 0.0), (1.0 if item.image is not None else 0.0)
        fused = self.encode_text(text) * txt_mask  # fuse_embeddings: the masked sum
        if item.image is not None:
            fused = fused + self.encode_image(item.image) * img_mask
        return F.normalize(fused.float(), dim=-1).cpu().numpy()


class TransformersClipReference(Reference):
    """transformers' own CLIP / SigLIP model and PIL image processor, UniIR's text rule and its
    fusion (the sum of the raw projections, normalised)."""

    def __init__(self, folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 uniir: bool = True):
        import transformers
        from transformers import AutoTokenizer, CLIPModel, SiglipModel

        folder = Path(folder)
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        pre = {k: v for k, v in pre.items() if k != "image_processor_type"}
        self.kind = json.loads((folder / "config.json").read_text())["model_type"]
        if self.kind == "siglip":
            from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Processor
        else:
            from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Processor
        model_class = SiglipModel if self.kind == "siglip" else CLIPModel
        self.model = model_class.from_pretrained(str(folder), local_files_only=True, dtype=dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.image_processor = Processor(**pre)
        self.uniir, self.device, self.dtype = uniir, device, dtype
        self.description = f"transformers {transformers.__version__} {model_class.__name__} + UniIR's fusion rule"

    def text(self, item: Item) -> str:
        if self.uniir:
            return openai_clean(uniir_text(item))
        text = f"{item.instruction} {item.text or ''}" if item.is_query and item.instruction else (item.text or "")
        return text.strip()

    @torch.no_grad()
    def embed(self, item: Item) -> np.ndarray:
        model, vector = self.model, 0
        text = self.text(item)
        if text:
            if self.kind == "siglip":
                enc = self.tokenizer([text], padding="max_length", truncation=True,
                                     max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
                vector = vector + model.text_model(input_ids=enc["input_ids"].to(self.device)).pooler_output[0]
            else:
                enc = self.tokenizer([text], truncation=True, return_tensors="pt",
                                     max_length=model.config.text_config.max_position_embeddings).to(self.device)
                vector = vector + model.text_projection(model.text_model(**enc).pooler_output)[0]
        if item.image is not None:
            # convert("RGB") as UniIR (OpenAI's _convert_image_to_rgb) does; transformers 5's own
            # conversion would also composite a colour key PIL leaves in ``info`` on white
            pixels = self.image_processor(_open_rgb(item.image), do_convert_rgb=False,
                                          return_tensors="pt")["pixel_values"]
            out = model.vision_model(pixel_values=pixels.to(self.device, self.dtype)).pooler_output
            vector = vector + (out[0] if self.kind == "siglip" else model.visual_projection(out)[0])
        return F.normalize(vector.float(), dim=-1).cpu().numpy()


def clip_sf_reference(folder: Path, *, device: str, dtype: torch.dtype, options: dict[str, Any]) -> Reference:
    """UniIR's loop when umr read a UniIR ``.pth`` (``checkpoint=`` or the one in the folder, as
    umr picks it), else transformers' CLIP / SigLIP; both format text as UniIR does for every
    model it evaluates (umr's default, ``uniir_text=True``)."""
    folder = Path(folder)
    checkpoint = options.get("checkpoint")
    if checkpoint is None:
        found = sorted(folder.glob("*.pth")) + sorted(folder.glob("*.pt"))
        checkpoint = found[0] if len(found) == 1 else None
    if checkpoint in (None, False):
        return TransformersClipReference(folder, device=device, dtype=dtype)
    return UniIRClipSfReference(folder, resolve_checkpoint(checkpoint), device=device, dtype=dtype,
                                trust_checkpoint=bool(options.get("trust_checkpoint", False)))
