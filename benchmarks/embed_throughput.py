"""Embedding throughput: umr's paths against the plain loops they replace, in one run.

(a) GME: ``umr`` (cost-sorted mixed batches, items prepared ahead where a core is spare, fast vision
    tower, packed decoder) against a per-batch loop written the way GME's reference code is
    (message strings -> ``fetch_image`` -> transformers' Qwen2-VL processor with right padding ->
    embed tokens, vision tower, text decoder with ``position_ids=None`` -> last token), on the same
    randomly initialised mid-sized Qwen2-VL, the same items and the same batch size.
(b) Qwen3-VL-Embedding: the same against a per-batch loop written the way ``Qwen3VLEmbedder`` is
    (conversations -> chat template -> ``fetch_image`` with factor 32 -> transformers' Qwen3-VL
    processor with ``do_resize=False``, right padding -> ``Qwen3VLModel(**inputs)`` -> last
    attended token), on a random mid-sized Qwen3-VL.
    Rows ``gme``/``qwen3vl`` are umr in float32 (max|delta| to the reference, and the effect of
    prefetching: ``prefetch_speedup`` against preparing inline), ``gme_bf16``/``qwen3vl_bf16`` umr
    in bfloat16 (the worst cosine to the float32 reference); the reference always runs in float32,
    the user's default baseline.
(c) MM-Embed: umr in bfloat16 against umr in float32 (worst cosine, speed).
(d) Text: ``umr.load_model("minilm")`` against sentence-transformers' ``encode`` on the same
    sentences (mixed lengths).

MFU is each run's FLOPs (counted once with ``FlopCounterMode`` on the real, unpadded shapes)
per second over the best ``torch.matmul`` rate measured in the same run at the same dtype and
at the model's own decoder GEMM shape (tokens per batch x hidden x intermediate), see
``benchmarks/machine.py``. Ratios are measured here, never asserted in tests. Prints a table and
writes ``benchmarks/results/embed_throughput.json``.

    python benchmarks/embed_throughput.py                 # full run (several minutes on 2 cores)
    python benchmarks/embed_throughput.py --quick         # smoke run
    python benchmarks/embed_throughput.py --only gme      # one family's rows, the others kept
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import umr
from machine import counted_flops, gemm_peak, machine, mfu  # benchmarks/machine.py
from umr.testing import write_tiny_gme, write_tiny_qwen3vl
from umr.core.items import Item
from umr.verify.references.qwen_vl import GmeReference, qwen_vl_utils_fetch_image

RESULTS = Path(__file__).resolve().parent / "results" / "embed_throughput.json"

MID_TEXT = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=2, mrope_section=[8, 12, 12])
MID_VISION = dict(depth=4, embed_dim=256, num_heads=4, mlp_ratio=4)

WORDS = ("a an the of to in on with for by from and or is are was this that image photo picture "
         "dog cat car truck bird flower tree house street city river mountain sky cloud sea beach red "
         "green blue yellow black white small large old new running sitting standing man woman child "
         "people group table chair window door road bridge train plane boat what which where when who "
         "how why wikipedia article history population century famous built located north south").split()


def sentences(n: int, rng: random.Random, lo: int = 3, hi: int = 60) -> list[str]:
    out = []
    for _ in range(n):
        k = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        out.append(" ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + ".")
    return out


# -- the reference-style loop -------------------------------------------------------------------

def image_only_processor(processor_class, folder: Path, image_processor, **options):
    """``processor_class`` (a transformers Qwen-VL processor) without its video processor, with
    the folder's tokenizer padding on the right, as the references batch."""
    from transformers import AutoTokenizer

    class ImageOnlyProcessor(processor_class):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "right"
    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, **options)


class ReferenceLoop:
    """GME's reference ``embed`` per batch of consecutive items (any modality mix)."""

    def __init__(self, folder: Path, model, *, min_image_tokens=256, max_image_tokens=1280, max_length=1800):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

        self.processor = image_only_processor(
            Qwen2VLProcessor, folder, Qwen2VLImageProcessorPil(min_pixels=min_image_tokens * 784,
                                                               max_pixels=max_image_tokens * 784))
        self.model = model  # Qwen2VLModel: .visual and .language_model
        self.max_length = max_length

    def embed(self, items: list[Item]) -> torch.Tensor:
        texts, images = [], []
        for item in items:
            instruction = item.instruction if item.is_query and item.instruction else "You are a helpful assistant."
            user = ""
            if item.image is not None:
                user += "<|vision_start|><|image_pad|><|vision_end|>"
                images.append(GmeReference.fetch_image(item.image))
            if item.text is not None:
                user += item.text
            texts.append(f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                         f"<|im_start|>assistant\n<|endoftext|>")
        inputs = self.processor(text=texts, images=images or None, padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            embeds = self.model.language_model.embed_tokens(inputs["input_ids"])
            if images:
                pixels = inputs["pixel_values"].type(self.model.visual.dtype)
                image_embeds = self.model.visual(pixels, grid_thw=inputs["image_grid_thw"]).pooler_output
                embeds[inputs["input_ids"] == self.model.config.image_token_id] = image_embeds
            out = self.model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                                            position_ids=None).last_hidden_state
            last = inputs["attention_mask"].sum(dim=1) - 1
            vec = out[torch.arange(out.shape[0]), last]
            return torch.nn.functional.normalize(vec.float(), p=2, dim=1)

    def run(self, items: list[Item], batch_size: int) -> np.ndarray:
        return torch.cat([self.embed(items[i: i + batch_size])
                          for i in range(0, len(items), batch_size)]).numpy()


MID_Q3_TEXT = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=2, head_dim=64, mrope_section=[16, 8, 8])
MID_Q3_VISION = dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, num_position_embeddings=256,
                     deepstack_visual_indexes=[0, 1])


class Qwen3ReferenceLoop:
    """``Qwen3VLEmbedder.process`` per batch of consecutive items (any modality mix)."""

    def __init__(self, folder: Path, model, max_length: int = 8192):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

        self.processor = image_only_processor(
            Qwen3VLProcessor, folder, Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, image_mean=[0.5] * 3,
                                                               image_std=[0.5] * 3),
            chat_template=(folder / "chat_template.jinja").read_text())
        self.model = model  # Qwen3VLModel
        self.max_length = max_length

    def embed(self, items: list[Item]) -> torch.Tensor:
        conversations, images = [], []
        for item in items:
            instruction = (item.instruction or "").strip() if item.is_query else ""
            if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
                instruction += "."
            content = []
            if item.image is not None:
                content.append({"type": "image", "image": item.image})
                images.append(qwen_vl_utils_fetch_image(item.image, factor=32, min_pixels=4 * 32 * 32,
                                                         max_pixels=1800 * 32 * 32))
            if item.text is not None:
                content.append({"type": "text", "text": item.text})
            conversations.append([
                {"role": "system", "content": [{"type": "text", "text": instruction or "Represent the user's input."}]},
                {"role": "user", "content": content}])
        text = self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=text, images=images or None, truncation=True, max_length=self.max_length,
                                padding=True, do_resize=False, do_convert_rgb=False, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"]
            col = mask.shape[1] - mask.flip(dims=[1]).argmax(dim=1) - 1
            vec = hidden[torch.arange(hidden.shape[0]), col]
            return torch.nn.functional.normalize(vec.float(), p=2, dim=-1)

    def run(self, items: list[Item], batch_size: int) -> np.ndarray:
        return torch.cat([self.embed(items[i: i + batch_size])
                          for i in range(0, len(items), batch_size)]).numpy()


def gme_items(folder: Path, n: int, rng: random.Random) -> list[Item]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        kind = ("text", "image", "fused")[i % 3]
        image = None
        if kind != "text":
            w, h = rng.randint(224, 640), rng.randint(224, 640)
            pixels = np.random.RandomState(i).randint(0, 256, (h, w, 3), dtype=np.uint8)
            image = folder / f"img{i}.jpg"
            Image.fromarray(pixels).save(image, quality=90)
            image = str(image)
        text = sentences(1, rng, 4, 40)[0] if kind != "image" else None
        if rng.random() < 0.5:
            items.append(Item.query(text, image=image, instruction="Find a matching item.", id=str(i)))
        else:
            items.append(Item.candidate(text, image=image, id=str(i)))
    rng.shuffle(items)
    return items


def timed_group(runs: dict, repeats: int) -> tuple[dict[str, float], dict]:
    """Best-of-``repeats`` wall time of each run, interleaved so a busy machine hurts all alike."""
    best = {name: float("inf") for name in runs}
    outs = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outs


def gemm_shape(model, items: list[Item], batch_size: int) -> tuple[int, int, int]:
    """The decoder's main GEMM at this run's shapes: (tokens per batch, hidden, intermediate)."""
    from umr.models.base import plan_batches

    costs = [model.check(item) for item in items]
    batches = plan_batches(costs, max_items=batch_size, budget=model.cost_budget)
    text = model.model.config.text_config
    return round(sum(costs) / len(batches)), int(text.hidden_size), int(text.intermediate_size)


def mfu_of(fn, seconds: float, peak: float, *models: torch.nn.Module) -> float:
    """Model FLOPs utilisation of ``fn`` (its FLOPs counted once, outside the timed runs)."""
    return mfu(counted_flops(fn, *models), seconds, peak)


#: the two Qwen-VL families: tiny-checkpoint writer, mid-sized shapes, reference loop
VL_FAMILIES = {
    "gme": (write_tiny_gme, MID_TEXT, MID_VISION, ReferenceLoop, "Qwen2-VL"),
    "qwen3vl": (write_tiny_qwen3vl, MID_Q3_TEXT, MID_Q3_VISION, Qwen3ReferenceLoop, "Qwen3-VL"),
}


def bench_vl(family: str, n: int, batch_size: int, repeats: int, workdir: Path) -> dict[str, dict]:
    """The family's reference-style loop (float32, the user's default baseline) against umr in
    float32 (prefetching on and off) and in bfloat16, all timed in the same run."""
    from transformers import AutoModel

    from umr.models.registry import quiet_transformers

    write, text, vision, Loop, arch = VL_FAMILIES[family]
    folder = write(workdir / f"{family}-mid", seed=0, text=text, vision=vision)
    items = gme_items(workdir / f"{family}-images", n, random.Random(0))
    models = {dtype: umr.load_model(folder, dtype=dtype) for dtype in ("float32", "bfloat16")}
    with quiet_transformers():  # its load report lists the unused lm_head
        plain = AutoModel.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa").eval()
    reference = Loop(folder, plain)
    warm = items[:3]
    reference.run(warm, batch_size)
    for model in models.values():
        model.embed(warm, batch_size=batch_size)

    from umr.models.prefetch import resolved_workers

    fp32 = models["float32"]
    default_workers = resolved_workers(fp32.prefetch_workers)

    def other_prefetch() -> np.ndarray:
        """The float32 path with prefetching the other way round from this machine's default."""
        fp32.prefetch_workers = 0 if default_workers else 1
        try:
            return fp32.embed(items, batch_size=batch_size).vectors
        finally:
            fp32.prefetch_workers = type(fp32).prefetch_workers

    runs = {"reference": lambda: reference.run(items, batch_size), "other_prefetch": other_prefetch}
    runs.update({dtype: (lambda m=model: m.embed(items, batch_size=batch_size).vectors)
                 for dtype, model in models.items()})
    seconds, outs = timed_group(runs, repeats)
    shape = gemm_shape(models["float32"], items, batch_size)
    peaks = {dtype: gemm_peak(getattr(torch, dtype), *shape) for dtype in models}
    n_params = sum(p.numel() for p in models["float32"].model.parameters())
    common = {"model": f"random {arch}: text {text}, vision {vision} ({n_params / 1e6:.1f}M params)",
              "items": n, "batch_size": batch_size,
              "mix": "1/3 text, 1/3 image (224-640 px), 1/3 fused; half queries with an instruction",
              "reference_dtype": "float32", "reference_items_per_s": n / seconds["reference"],
              "gemm_shape_mkn": list(shape)}
    # the same work in either dtype: FLOPs counted once, on the float32 path
    flops = counted_flops(lambda: models["float32"].embed(items, batch_size=batch_size), models["float32"].model)
    rows = {}
    for dtype, model in models.items():
        row = {**common, "dtype": dtype, "umr_items_per_s": n / seconds[dtype],
               "ratio": seconds["reference"] / seconds[dtype], "gemm_peak_flops": peaks[dtype],
               "flops": flops, "mfu": mfu(flops, seconds[dtype], peaks[dtype])}
        if dtype == "float32":
            row.update(max_abs_delta=float(np.abs(outs[dtype] - outs["reference"]).max()),
                       reference_mfu=mfu_of(lambda: reference.run(items, batch_size), seconds["reference"],
                                            peaks[dtype], plain),
                       prefetch_workers_default=default_workers,
                       other_prefetch_items_per_s=n / seconds["other_prefetch"],
                       # prefetching (one worker) against preparing inline, whichever is the default
                       prefetch_speedup=(seconds["other_prefetch"] / seconds[dtype] if default_workers
                                         else seconds[dtype] / seconds["other_prefetch"]))
            if family == "qwen3vl":
                row["packed"] = model.packed
        else:
            row["worst_cosine_to_float32"] = float((outs[dtype] * outs["reference"]).sum(axis=1).min())
        rows[family if dtype == "float32" else f"{family}_bf16"] = row
    return rows


MID_MM_TEXT = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=2)
MID_MM_VISION = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                     image_size=112, patch_size=14, projection_dim=256)


def bench_mmembed(n: int, batch_size: int, repeats: int, workdir: Path) -> dict[str, dict]:
    """MM-Embed (no reference loop here): umr in bfloat16 against umr in float32, same run."""
    from umr.testing import write_tiny_mmembed

    folder = write_tiny_mmembed(workdir / "mmembed-mid", seed=0, text=MID_MM_TEXT, vision=MID_MM_VISION)
    items = gme_items(workdir / "mm-images", n, random.Random(0))
    models = {dtype: umr.load_model(folder, dtype=dtype) for dtype in ("float32", "bfloat16")}
    for model in models.values():
        model.embed(items[:3], batch_size=batch_size)
    seconds, outs = timed_group({dtype: (lambda m=model: m.embed(items, batch_size=batch_size).vectors)
                                 for dtype, model in models.items()}, repeats)
    costs = [models["float32"].check(item) for item in items]
    shape = (min(sum(costs), batch_size * max(costs)), MID_MM_TEXT["hidden_size"], MID_MM_TEXT["intermediate_size"])
    peaks = {dtype: gemm_peak(getattr(torch, dtype), *shape) for dtype in models}
    row = {"model": f"random MM-Embed: text {MID_MM_TEXT}, vision {MID_MM_VISION}", "items": n,
           "batch_size": batch_size, "dtype": "bfloat16", "baseline": "umr float32",
           "reference_items_per_s": n / seconds["float32"], "umr_items_per_s": n / seconds["bfloat16"],
           "ratio": seconds["float32"] / seconds["bfloat16"], "gemm_shape_mkn": list(shape),
           "worst_cosine_to_float32": float((outs["bfloat16"] * outs["float32"]).sum(axis=1).min())}
    # either dtype's work
    flops = counted_flops(lambda: models["float32"].embed(items, batch_size=batch_size), models["float32"].model)
    row.update(flops=flops, float32_mfu=mfu(flops, seconds["float32"], peaks["float32"]),
               mfu=mfu(flops, seconds["bfloat16"], peaks["bfloat16"]))
    return {"mmembed_bf16": row}


def bench_minilm(n: int, repeats: int) -> dict:
    from sentence_transformers import SentenceTransformer

    texts = sentences(n, random.Random(1), 3, 120)
    model = umr.load_model("minilm")
    st = SentenceTransformer(str(umr.models.catalog.REGISTRY["minilm"].resolve_source()), device="cpu")
    st.encode(texts[:8])
    model.encode_candidates(texts[:8])
    seconds, outs = timed_group({
        "st": lambda: st.encode(texts, normalize_embeddings=True, show_progress_bar=False),
        "umr": lambda: model.encode_candidates(texts, show_progress_bar=False)}, repeats)
    t_st, st_vectors, t_umr, vectors = seconds["st"], outs["st"], seconds["umr"], outs["umr"]
    return {"model": "all-MiniLM-L6-v2", "items": n, "st_batch_size": 32,
            "sentence_transformers_items_per_s": n / t_st, "umr_items_per_s": n / t_umr,
            "ratio": t_st / t_umr, "max_abs_delta": float(np.abs(vectors - st_vectors).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--gme-items", type=int, default=None)
    parser.add_argument("--text-items", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32, help="items per batch for both paths (GME's default: 32)")
    parser.add_argument("--only", choices=["gme", "qwen3vl", "mmembed", "minilm"], default=None,
                        help="run one family's rows and update them in the results file, keeping the others")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gme_n = args.gme_items or (12 if args.quick else 96)
    text_n = args.text_items or (200 if args.quick else 3000)
    repeats = 1 if args.quick else 2

    wanted = {args.only} if args.only else {"gme", "qwen3vl", "mmembed", "minilm"}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="umr-bench-") as tmp:
        for family in VL_FAMILIES:
            if family in wanted:
                rows.update(bench_vl(family, gme_n, args.batch_size, repeats, Path(tmp)))
        if "mmembed" in wanted:
            rows.update(bench_mmembed(gme_n, args.batch_size, repeats, Path(tmp)))
    if "minilm" in wanted:
        rows["minilm"] = bench_minilm(text_n, repeats)

    print(f"{'benchmark':<13} {'items':>5} {'baseline it/s':>13} {'umr it/s':>9} {'ratio':>7} "
          f"{'max|d| / cos':>12} {'MFU':>6}")
    for name, row in rows.items():
        base = row.get("reference_items_per_s", row.get("sentence_transformers_items_per_s"))
        check = f"{row['max_abs_delta']:.1e}" if "max_abs_delta" in row else f"{row['worst_cosine_to_float32']:.5f}"
        share = f"{row['mfu']:.1%}" if "mfu" in row else "-"
        print(f"{name:<13} {row['items']:>5} {base:>13.2f} {row['umr_items_per_s']:>9.2f} "
              f"{row['ratio']:>6.2f}x {check:>12} {share:>6}")
    meta = {**machine(), "quick": args.quick, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    kept = {}
    if args.only and args.output.is_file():  # one row re-run: the others stay as measured
        kept = json.loads(args.output.read_text())
        kept[f"meta_{args.only}"] = meta
        meta = kept.pop("meta", meta)
    args.output.write_text(json.dumps({**kept, "meta": meta, **rows}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
