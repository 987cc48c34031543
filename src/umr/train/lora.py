"""Which parameters train: LoRA adapters (peft), whole sub-modules, or everything.

LoRA layers are injected into the family's own network in place
(``peft.inject_adapter_in_model``), so the embedder's forward runs through them unchanged, and
merged back into plain weights before saving (``merge``), so the saved model is an ordinary
checkpoint of its family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def merge(module: nn.Module) -> None:
    """Fold every LoRA adapter into its base layer and put the plain layer back in place."""
    for name, layer in lora_layers(module):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())


def save_adapter(module: nn.Module, config: Any, folder: Path, *, base_model: str) -> None:
    """peft's adapter files (``adapter_config.json``, ``adapter_model.safetensors``)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(module).items()}
    save_file(state, str(folder / "adapter_model.safetensors"))
    settings = config.to_dict()
    settings["base_model_name_or_path"] = base_model
    settings = {k: (sorted(v) if isinstance(v, set) else v) for k, v in settings.items()}
    (folder / "adapter_config.json").write_text(json.dumps(settings, indent=2, default=str))

