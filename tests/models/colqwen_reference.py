"""An independent reference for ColQwen2 / ColQwen2.5: colpali-engine's inference written out with
plain transformers, torch and PIL calls, no umr code (so it also runs where colpali-engine is
installed, to check it against the real thing: see ``check_against_colpali``).

colpali-engine cannot share the test environment (it pins another peft), so the tests compare umr
with this; it was checked once against colpali-engine 0.3.18 (transformers 5.25, torch 2.13,
torchvision 0.28) on the tiny checkpoints: see ``notes`` in the test module.

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

VISUAL_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image."
                 "<|im_end|><|endoftext|>")


class LoraLinear(torch.nn.Module):
    """A linear layer with a LoRA beside it, computed unmerged: ``base(x) + scale * B(A(x))``."""

    def __init__(self, base: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.a, self.b, self.scale = base, a, b, scale

    def forward(self, x):
        return self.base(x) + (x @ self.a.T @ self.b.T) * self.scale


class ReferenceColQwen:
    def __init__(self, adapter_folder: str | Path):
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        folder = Path(adapter_folder)
        adapter = json.loads((folder / "adapter_config.json").read_text())
        base = Path(adapter["base_model_name_or_path"])
        self.model = AutoModel.from_pretrained(str(base), dtype=torch.float32).eval()
        weights = load_file(str(base / "model.safetensors"))
        out_dim, hidden = weights["custom_text_proj.weight"].shape
        self.proj = torch.nn.Linear(hidden, out_dim)
        self.proj.load_state_dict({"weight": weights["custom_text_proj.weight"], "bias": weights["custom_text_proj.bias"]})
        lora = load_file(str(folder / "adapter_model.safetensors"))
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
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.tokenizer.padding_side = "left"
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.settings = json.loads((folder / "preprocessor_config.json").read_text())

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
        return self._run(prompts, pixel_values=torch.cat(patches), image_grid_thw=torch.tensor(grids))

    def _run(self, prompts: list[str], **vision) -> list[np.ndarray]:
        batch = self.tokenizer(prompts, padding="longest", return_tensors="pt")
        mask = batch["attention_mask"]
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=mask,
                            mm_token_type_ids=(batch["input_ids"] == self.image_token_id).int(),
                            use_cache=False, **vision).last_hidden_state
        proj = self.proj(hidden)
        proj = proj / proj.norm(dim=-1, keepdim=True)
        proj = proj * mask.unsqueeze(-1)
        return [row[m.bool()].numpy() for row, m in zip(proj, mask)]


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
    ours = ReferenceColQwen(adapter_folder)
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


if __name__ == "__main__":
    import sys

    print(check_against_colpali(*sys.argv[1:5]))
