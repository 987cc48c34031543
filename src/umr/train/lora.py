"""Which parameters train: LoRA adapters (peft), whole sub-modules, or everything.

LoRA layers are injected into the family's own network in place
(``peft.inject_adapter_in_model``), so the embedder's forward runs through them unchanged, and
merged back into plain weights before saving (``merge``), so the saved model is an ordinary
checkpoint of its family. :func:`save_adapter` also writes them as a peft adapter of the
family's transformers model.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn


def add_lora(module: nn.Module, *, r: int, alpha: int, targets: Any, dropout: float = 0.0) -> Any:
    """Inject LoRA adapters into ``module``; returns the peft ``LoraConfig`` used."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    try:
        inject_adapter_in_model(config, module)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise ValueError(f"LoRA targets {targets!r} match no layer of the model ({str(exc).splitlines()[0]})") from None
    return config


def lora_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]


def select_trainable(module: nn.Module, *, full: bool, train_modules: list[str]) -> int:
    """Freeze everything but LoRA weights and ``train_modules`` (or nothing, with ``full``);
    returns the number of trainable parameters."""
    for name, param in module.named_parameters():
        if full:
            param.requires_grad_(True)
        else:
            param.requires_grad_("lora_" in name or any(name == p or name.startswith(p + ".")
                                                        for p in train_modules))
    unknown = [p for p in train_modules if not any(n == p or n.startswith(p + ".") for n, _ in module.named_parameters())]
    if unknown:
        raise ValueError(f"train_modules {unknown} name no part of the model")
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def set_dropout(module: nn.Module, active: bool) -> None:
    """Turn LoRA's dropout on (training steps) or off (evaluation).

    peft adds its dropout layers in training mode whatever mode the model is in, while the
    trainer keeps the family's own modules in eval mode (their dropout off, so that the training
    forward is the embedding forward): the LoRA dropout's mode is therefore set here, on purpose.
    """
    for _, layer in lora_layers(module):
        layer.lora_dropout.train(active)


def keep_float32(params: list[nn.Parameter]) -> int:
    """Trainable weights in float32 whatever the frozen ones are in (peft gives LoRA the base
    layer's dtype): the optimizer then updates them, and keeps its state, in float32. Returns
    how many were converted."""
    converted = 0
    for param in params:
        if param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            converted += 1
    return converted


def merge(module: nn.Module) -> None:
    """Fold every LoRA adapter into its base layer and put the plain layer back in place."""
    for name, layer in lora_layers(module):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())


def adapter_base(module: nn.Module, owned: list[str]) -> str:
    """Where, in ``module``, the network a peft adapter belongs to sits: the outermost
    transformers ``PreTrainedModel`` holding every name in ``owned`` (LoRA layers and trained
    modules; the text family's is sentence-transformers' ``0.auto_model``), else ``module``
    itself (``""``, a family's own network such as MM-Embed's)."""
    from transformers import PreTrainedModel

    for name, child in module.named_modules():  # parents before children: the outermost first
        prefix = f"{name}." if name else ""
        if isinstance(child, PreTrainedModel) and all(n.startswith(prefix) for n in owned):
            return name
    return ""


def save_adapter(module: nn.Module, config: Any, folder: Path, *, base_model: str,
                 train_modules: list[str]) -> str:
    """peft's adapter files (``adapter_config.json``, ``adapter_model.safetensors``) for the
    network :func:`adapter_base` finds: ``PeftModel.from_pretrained(that network, folder)``
    loads them with no key missing or unexpected. ``train_modules`` are saved whole, as peft's
    ``modules_to_save``. Returns the network's path in ``module`` ("" for ``module`` itself)."""
    from safetensors.torch import save_file

    injected = [name for name, _ in lora_layers(module)]
    base_name = adapter_base(module, injected + list(train_modules))
    prefix = f"{base_name}." if base_name else ""

    def key(name: str) -> str:  # peft's saved names: no adapter name, under base_model.model
        return "base_model.model." + re.sub(r"(lora_\w+)\.default(?=\.|$)", r"\1", name[len(prefix):])

    state = {}
    for name, param in module.named_parameters():
        if "lora_" in name or any(name.startswith(f"{m}.") for m in train_modules):
            state[key(name)] = param.detach().float().contiguous().cpu()
    settings = copy.deepcopy(config)
    relative = sorted(name[len(prefix):] for name in injected)
    base = module.get_submodule(base_name) if base_name else module
    targets = settings.target_modules
    if not (isinstance(targets, str) and
            sorted(n for n, _ in base.named_modules() if n and re.fullmatch(targets, n)) == relative):
        # a list of suffixes, or a pattern that would reach other layers of the bare network
        targets = "^(?:" + "|".join(re.escape(n) for n in relative) + ")$"
    settings.target_modules = targets
    settings.modules_to_save = [m[len(prefix):] for m in train_modules] or None
    settings.base_model_name_or_path = base_model
    settings.inference_mode = True
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    settings.save_pretrained(str(folder))
    return base_name
