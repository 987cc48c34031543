"""The transformers generator: batched, chat-templated, seeded sampling, bounded new tokens."""

from __future__ import annotations

from umr.synth import Decoding, Generator, load_generator
from umr.testing import ScriptedLogits

CHATS = [[{"role": "user", "content": "a heron in the lake"}], [{"role": "user", "content": "kettle"}]]


def test_sampling_is_seeded_and_bounded(tiny_generator_dir):
    generator = load_generator(tiny_generator_dir, decoding=Decoding(max_new_tokens=6, temperature=1.0))
    assert isinstance(generator, Generator)
    first = generator.generate(CHATS, seed=3)
    assert generator.generate(CHATS, seed=3) == first
    assert generator.generate(CHATS, seed=4) != first


def test_new_tokens_are_bounded(tiny_generator_dir):
    generator = load_generator(tiny_generator_dir, decoding=Decoding(max_new_tokens=4))
    text = "one two three four five six seven eight nine"
    generator.logits_processors = lambda: [ScriptedLogits(generator.tokenizer, lambda p: text)]
    tokens = generator.tokenizer.encode(text, add_special_tokens=False)
    assert generator.generate(CHATS, seed=0) == [generator.tokenizer.decode(tokens[:4])] * 2


def test_scripted_replies_come_through_the_real_generate_loop(tiny_generator_dir):
    generator = load_generator(tiny_generator_dir, decoding=Decoding(max_new_tokens=64))
    generator.logits_processors = lambda: [ScriptedLogits(generator.tokenizer, lambda p: "Ünïcode {\"a\": 1}"
                                                          if "kettle" in p else "short")]
    assert generator.generate(CHATS, seed=0) == ["short", "Ünïcode {\"a\": 1}"]
    assert "<|im_start|>assistant\n" in generator.prompt_text(CHATS[0])
