"""ColQwen2 / ColQwen2.5's references: colpali-engine itself where it is installed, else its
inference written out with plain transformers, torch and PIL calls and no umr code (which also runs
beside colpali-engine, to check it against the real thing: see ``check_against_colpali``).

colpali-engine cannot share umr's environment (it pins another peft and needs torchvision), so the
tests compare umr with the loop; it was checked once against colpali-engine 0.3.18 (transformers
5.25, torch 2.13, torchvision 0.28) on the tiny checkpoints: see the notes in tests/models/test_colqwen.py.

What colpali-engine does, step by step, as this reproduces it:

* ``process_queries``: ``text + "<|endoftext|>" * 10``; ``process_texts``: the text; both
  tokenised in one batch, padded on the left;
* ``process_images``: ``image.convert("RGB")``, then transformers' torchvision image processor:
  ``convert_to_rgb`` (a colour key left in ``info`` composited on white), ``smart_resize``,
  ``interpolate`` of the uint8 image (bicubic, antialias), ``(x - mean/r) / (std/r)`` in float32,
  patches; the prompt's ``<|image_pad|>`` repeated once per merged token;
* the model: the Qwen-VL base model on the padded batch (3-D M-RoPE positions from
  ``mm_token_type_ids``), the LoRA adapter run beside each adapted layer as PEFT does, then
  ``custom_text_proj``, ``x / ||x||`` and the attention mask; the padding rows are dropped here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...core.items import Item
from ...models.colqwen.modeling_colqwen import base_folder
from .base import Reference, read_safetensors

VISUAL_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image."
                 "<|im_end|><|endoftext|>")


class LoraLinear(torch.nn.Module):
    """A linear layer with a LoRA beside it, computed unmerged: ``base(x) + scale * B(A(x))``."""

    def __init__(self, base: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.a, self.b, self.scale = base, a, b, scale

    def forward(self, x):
        return self.base(x) + (x @ self.a.T @ self.b.T) * self.scale


def _open(image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.open(str(image))


def _adapter(folder: Path) -> dict | None:
    path = folder / "adapter_config.json"
    return json.loads(path.read_text()) if path.is_file() else None


class ColQwenReference(Reference):
    """colpali-engine's ColQwen2 / ColQwen2.5 inference on plain transformers, torch and PIL: an
    adapter folder (its LoRA run beside each adapted layer, unmerged) or a merged folder."""

    def __init__(self, folder: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
        import transformers
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        adapter = _adapter(folder)
        base = base_folder(folder, adapter) if adapter is not None else folder
        self.model = AutoModel.from_pretrained(str(base), dtype=torch.float32).eval()
        weights = read_safetensors(base)
        out_dim, hidden = weights["custom_text_proj.weight"].shape
        self.proj = torch.nn.Linear(hidden, out_dim)
        self.proj.load_state_dict({"weight": weights["custom_text_proj.weight"], "bias": weights["custom_text_proj.bias"]})
        lora = load_file(str(folder / "adapter_model.safetensors")) if adapter is not None else {}
        modules = dict(self.model.named_modules())
        for key in [k for k in lora if k.endswith("lora_A.weight")]:
            name = key[len("base_model.model."): -len(".lora_A.weight")]
            a, b = lora[key], lora[key.replace("lora_A", "lora_B")]
            scale = adapter["lora_alpha"] / a.shape[0]
            if name == "custom_text_proj":
                self.proj = LoraLinear(self.proj, a, b, scale)
                continue
            full = "language_model." + name[len("model."):]
            parent_name, _, child = full.rpartition(".")
            parent = modules[parent_name]
            setattr(parent, child, LoraLinear(getattr(parent, child), a, b, scale))
        self.model.to(device=device, dtype=dtype)
        self.proj.to(device=device, dtype=dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.tokenizer.padding_side = "left"
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.settings = json.loads((folder / "preprocessor_config.json").read_text())
        self.device, self.dtype = device, dtype
        self.description = (f"umr's ColQwen reference loop (colpali-engine's inference on plain transformers; "
                            f"colpali-engine is not installed here), transformers {transformers.__version__}")

    @torch.no_grad()
    def embed(self, item: Item) -> np.ndarray:
        """One item's token vectors ``(n_tokens, dim)``, as colpali-engine embeds a query, a text or a page."""
        if item.image is not None:
            if item.text is not None:
                raise ValueError("colpali-engine embeds a text or an image, not both")
            return self.images([_open(item.image)])[0]
        if item.is_query:
            text = f"{item.instruction} {item.text}" if item.instruction else item.text
            return self.queries([text])[0]
        return self.texts([item.text])[0]

    # -- inputs --------------------------------------------------------------------------------

    def image_patches(self, image: Image.Image):
        from transformers.image_transforms import convert_to_rgb
        try:
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
        except ImportError:  # no torchvision: the same function in the PIL backend's module
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        s = self.settings
        pixels = convert_to_rgb(image.convert("RGB"), return_numpy=True)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()[None]
        height, width = smart_resize(tensor.shape[2], tensor.shape[3], factor=s["patch_size"] * s["merge_size"],
                                     min_pixels=s["min_pixels"], max_pixels=s["max_pixels"])
        if (height, width) != tuple(tensor.shape[2:]):  # torchvision's resize of a uint8 image on CPU
            tensor = torch.nn.functional.interpolate(tensor, size=[height, width], mode="bicubic",
                                                     align_corners=False, antialias=True)
        mean = torch.tensor(s["image_mean"]) * (1.0 / s["rescale_factor"])
        std = torch.tensor(s["image_std"]) * (1.0 / s["rescale_factor"])
        x = tensor.to(torch.float32).sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
        p, m, t = s["patch_size"], s["merge_size"], s["temporal_patch_size"]
        gh, gw = height // p, width // p
        x = x.reshape(1, 3, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1).reshape(gh * gw, 3 * t * p * p)
        return x, (1, gh, gw)

    # -- embeddings -----------------------------------------------------------------------------

    @torch.no_grad()
    def queries(self, texts: list[str]) -> list[np.ndarray]:
        return self._run([text + "<|endoftext|>" * 10 for text in texts])

    @torch.no_grad()
    def texts(self, texts: list[str]) -> list[np.ndarray]:
        return self._run(list(texts))

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> list[np.ndarray]:
        patches, grids, prompts = [], [], []
        merge = self.settings["merge_size"]
        for image in images:
            x, grid = self.image_patches(image)
            patches.append(x)
            grids.append(grid)
            prompts.append(VISUAL_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * (grid[1] * grid[2] // merge ** 2)))
        return self._run(prompts, pixel_values=torch.cat(patches).to(self.device, self.dtype),
                         image_grid_thw=torch.tensor(grids, device=self.device))

    def _run(self, prompts: list[str], **vision) -> list[np.ndarray]:
        batch = self.tokenizer(prompts, padding="longest", return_tensors="pt").to(self.device)
        mask = batch["attention_mask"]
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=mask,
                            mm_token_type_ids=(batch["input_ids"] == self.image_token_id).int(),
                            use_cache=False, **vision).last_hidden_state
        proj = self.proj(hidden).float()
        proj = proj / proj.norm(dim=-1, keepdim=True)
        proj = proj * mask.unsqueeze(-1)
        return [row[m.bool()].cpu().numpy() for row, m in zip(proj, mask)]


def maxsim_pairwise(queries: list[np.ndarray], candidates: list[np.ndarray]) -> np.ndarray:
    """MaxSim of each pair on its own (no padding enters a maximum), as einsum computes it."""
    out = np.zeros((len(queries), len(candidates)), dtype=np.float32)
    for i, q in enumerate(queries):
        for j, d in enumerate(candidates):
            out[i, j] = torch.einsum("nd,sd->ns", torch.from_numpy(q), torch.from_numpy(d)).max(dim=1)[0].sum()
    return out


def check_against_colpali(adapter_folder: str, version: str, inputs_dir: str, reference_npz: str) -> dict:
    """Max |difference| between this reference and colpali-engine's saved outputs (run where the
    npz was written by colpali-engine: token vectors of queries, texts and images, and scores)."""
    spec = json.loads((Path(inputs_dir) / "inputs.json").read_text())
    ref = np.load(reference_npz)
    ours = ColQwenReference(adapter_folder)
    worst = {}
    q = ours.queries(spec["queries"])
    worst["query"] = max(float(np.abs(v - ref[f"query/{i}"]).max()) for i, v in enumerate(q))
    t = ours.texts(spec["texts"])
    worst["text"] = max(float(np.abs(v - ref[f"text/{i}"]).max()) for i, v in enumerate(t))
    docs = [ours.images([Image.open(Path(inputs_dir) / n)])[0] for n in spec["images"]]
    worst["image"] = max(float(np.abs(v - ref[f"image/{n}"]).max()) for n, v in zip(spec["images"], docs))
    scores = maxsim_pairwise(q, docs + t)
    worst["maxsim"] = float(np.abs(scores - ref["scores_pairwise"]).max())
    return worst


class ColpaliEngineReference(Reference):
    """colpali-engine itself: ``ColQwen2_5`` / ``ColQwen2`` (an adapter through transformers' PEFT
    integration) and its processor's ``process_queries`` / ``process_texts`` / ``process_images``."""

    def __init__(self, folder: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
        import colpali_engine
        from colpali_engine import models
        from importlib.metadata import version

        folder = Path(folder)
        adapter = _adapter(folder)
        base = base_folder(folder, adapter) if adapter is not None else folder
        model_type = json.loads((base / "config.json").read_text()).get("model_type", "")
        model_class, processor_class = ((models.ColQwen2_5, models.ColQwen2_5_Processor) if "2_5" in model_type
                                        else (models.ColQwen2, models.ColQwen2Processor))
        self.model = model_class.from_pretrained(str(folder), torch_dtype=dtype).to(device).eval()
        self.processor = processor_class.from_pretrained(str(folder))
        self.device = device
        del colpali_engine
        self.description = f"colpali-engine {version('colpali-engine')} {model_class.__name__}"

    @torch.no_grad()
    def embed(self, item: Item) -> np.ndarray:
        if item.image is not None:
            if item.text is not None:
                raise ValueError("colpali-engine embeds a text or an image, not both")
            batch = self.processor.process_images([_open(item.image)])
        elif item.is_query:
            text = f"{item.instruction} {item.text}" if item.instruction else item.text
            batch = self.processor.process_queries([text])
        else:
            batch = self.processor.process_texts([item.text])
        batch = batch.to(self.device)
        out = self.model(**batch)[0].float()
        return out[batch["attention_mask"][0].bool()].cpu().numpy()


def colqwen_reference(folder: Path, *, device: str, dtype: torch.dtype) -> Reference:
    """colpali-engine where it imports, else the loop."""
    try:
        import colpali_engine  # noqa: F401
    except ImportError:
        return ColQwenReference(folder, device=device, dtype=dtype)
    return ColpaliEngineReference(folder, device=device, dtype=dtype)


if __name__ == "__main__":
    import sys

    print(check_against_colpali(*sys.argv[1:5]))
