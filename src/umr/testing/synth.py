"""A tiny random Qwen2-style generator (offline, for tests and the worked example), and a way to
script its replies through its logits.

A random model writes gibberish, which exercises the "malformed reply" path; scripting turns the
same real ``generate`` loop (batching, left padding, chat template, stopping) into one whose
replies a test chooses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .gme import SPECIAL_TOKENS, build_tokenizer

#: ChatML, as Qwen2 writes it
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_generator(folder: str | Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a tiny random ``Qwen2ForCausalLM`` with a byte-level BPE tokenizer and a chat template."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed, vocab_size)
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "bos_token": None, "model_max_length": 32768, "padding_side": "left",
        "clean_up_tokenization_spaces": False, "errors": "replace", "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }, indent=2))
    config = Qwen2Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                                               bos_token_id=ids["<|endoftext|>"])
    model.save_pretrained(folder)
    return folder


class ScriptedLogits:
    """A logits processor that makes each row reply ``reply(prompt)`` (then stop), for one ``generate``.

    ``reply`` sees the decoded prompt (chat template included) and returns the text to force.
    Use a fresh instance per ``generate`` call (``HFGenerator(logits_processors=...)`` does).
    """

    def __init__(self, tokenizer, reply: Callable[[str], str]):
        self.tokenizer = tokenizer
        self.reply = reply
        self.prompt_len: int | None = None
        self.targets: list[list[int]] = []

    def __call__(self, input_ids, scores):
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
            pad = self.tokenizer.pad_token_id
            for row in input_ids.tolist():
                prompt = self.tokenizer.decode([t for t in row if t != pad], skip_special_tokens=False)
                text = self.reply(prompt)
                self.targets.append(self.tokenizer.encode(text, add_special_tokens=False)
                                    + [self.tokenizer.eos_token_id])
        step = input_ids.shape[1] - self.prompt_len
        forced = scores.new_full(scores.shape, float("-inf"))
        for row, target in enumerate(self.targets):
            forced[row, target[min(step, len(target) - 1)]] = 0.0
        return forced
