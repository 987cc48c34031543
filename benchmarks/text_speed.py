"""The CPU speed of umr's text path, every candidate side by side in one run (issue 14).

On the benchmark sentences of ``embed_throughput.py`` (mixed lengths), with all-MiniLM-L6-v2
(``umr.load_model("minilm")``), each row embeds the same texts and reports items/s, the ratio
to the baseline and the worst cosine of its vectors to the baseline's:

* ``st_fp32``  sentence-transformers ``encode`` with its float32 defaults (the baseline);
* ``st_bf16``  the same with bf16 weights;
* ``st_int8``  the same after ``torch.ao.quantization.quantize_dynamic`` (int8 linear layers);
* ``umr_fp32`` / ``umr_bf16``  umr's light path (packed, fused QKV, tokenised once);
* ``umr_compiled``  umr's light path with its encoder under ``torch.compile(dynamic=True)``, timed
  after one warm-up pass over all the texts (``compile_seconds``) has compiled every shape;
* ``onnxruntime``  ST's BERT exported to ONNX (``torch.onnx.export``, dynamic batch and length),
  run by ONNX Runtime with all its graph optimisations, batched, padded and pooled as ST does;
* ``onnxruntime_fused``  the same graph after ONNX Runtime's BERT optimiser (fused attention,
  LayerNorm and GELU), what ST's ``backend="onnx"`` with optimum's O2-O3 levels amounts to.
  Both need the ``bench`` extra (``onnx``, ``onnxruntime``); without it the rows say so.

umr rows also report MFU: FLOPs counted by torch on umr's real (unpadded) tokens, over the
seconds taken, over this run's best matrix-product rate in the same dtype at the model's own
GEMM shape (tokens per forward x hidden x intermediate). Prints a table and writes
``benchmarks/results/text_speed.json``.

    flock /tmp/umr-bench.lock env PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/text_speed.py --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import umr
from embed_throughput import sentences
from machine import counted_flops, gemm_peak, machine, mfu
from umr.models.base import plan_batches
from umr.core.devices import cpu_bf16_setting, native_bf16_matmul
from umr.core.items import Item

RESULTS = Path(__file__).resolve().parent / "results" / "text_speed.json"


def time_rows(runs: dict, repeats: int) -> dict[str, tuple[float, np.ndarray]]:
    """Best-of-``repeats`` wall time and output of each run, the rows interleaved in every repeat
    so that a busy machine slows all of them alike."""
    best = {name: (float("inf"), None) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            out = run()
            seconds = time.perf_counter() - start
            if seconds < best[name][0]:
                best[name] = (seconds, out)
    return best


def worst_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def sentence_transformers_runs(texts: list[str]) -> dict:
    """The sentence-transformers baselines (``st_fp32``'s vectors are the reference)."""
    from sentence_transformers import SentenceTransformer

    source = str(umr.models.catalog.REGISTRY["minilm"].resolve_source())
    variants = {"st_fp32": lambda m: m, "st_bf16": lambda m: m.to(torch.bfloat16),
                "st_int8": lambda m: torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)}
    runs = {}
    for name, convert in variants.items():
        model = convert(SentenceTransformer(source, device="cpu"))
        model.encode(texts[:8])
        runs[name] = {"run": lambda m=model: m.encode(texts, normalize_embeddings=True, batch_size=32,
                                                      show_progress_bar=False, convert_to_numpy=True)}
    return runs


def onnx_runs(texts: list[str], workdir: Path) -> dict:
    """ST's model through ONNX Runtime, plain and with the BERT optimiser's fusions."""
    import onnxruntime
    from onnxruntime.transformers.optimizer import optimize_model
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(umr.models.catalog.REGISTRY["minilm"].resolve_source()), device="cpu")
    bert, tokenizer, max_length = st[0].auto_model.eval(), st.tokenizer, st.max_seq_length

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    sample = tokenizer(["a short one", "and a somewhat longer sentence"], padding=True, return_tensors="pt")
    plain = workdir / "minilm.onnx"
    axes = {"batch": 0, "tokens": 1}
    torch.onnx.export(LastHidden(), (sample["input_ids"], sample["attention_mask"]), str(plain),
                      input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                      dynamic_axes={name: {v: k for k, v in axes.items()} for name in ("input_ids", "attention_mask", "hidden")},
                      opset_version=17, dynamo=False)
    order = np.argsort([-len(t) for t in texts], kind="stable")  # ST's length sort

    def encode(session, subset: np.ndarray = order) -> np.ndarray:
        out = np.zeros((len(texts), bert.config.hidden_size), np.float32)
        for start in range(0, len(subset), 32):
            rows = subset[start:start + 32]
            batch = tokenizer([texts[i].strip() for i in rows], padding=True, truncation=True,
                              max_length=max_length, return_tensors="np")
            mask = batch["attention_mask"].astype(np.int64)
            hidden = session.run(None, {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": mask})[0]
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    def session(path: Path):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads leave the cores
        loaded = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        encode(loaded, order[:64])  # warm up, as the other rows are
        return {"run": lambda: encode(loaded)}

    runs = {"onnxruntime": session(plain)}
    fused = workdir / "minilm-fused.onnx"
    try:
        optimize_model(str(plain), model_type="bert", num_heads=bert.config.num_attention_heads,
                       hidden_size=bert.config.hidden_size).save_model_to_file(str(fused))
        runs["onnxruntime_fused"] = session(fused)
    except Exception as exc:  # noqa: BLE001 - an optimiser failure is this row's result
        runs["onnxruntime_fused"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return runs


def umr_runs(texts: list[str], *, compile_too: bool) -> dict:
    runs = {}
    for name, dtype in (("umr_fp32", "float32"), ("umr_bf16", "bfloat16")):
        model = umr.load_model("minilm", dtype=dtype)
        model.encode_candidates(texts[:8])
        runs[name] = {"run": lambda m=model: m.encode_candidates(texts, show_progress_bar=False), "model": model,
                      "dtype": getattr(torch, dtype)}
    if compile_too:
        model = umr.load_model("minilm", dtype="float32")
        eager = model.backend.encoder
        try:
            model.backend.encoder = torch.compile(eager, dynamic=True)
            start = time.perf_counter()
            model.encode_candidates(texts, show_progress_bar=False)  # compiles every batch shape once
            runs["umr_compiled"] = {"run": lambda: model.encode_candidates(texts, show_progress_bar=False),
                                    "model": model, "dtype": torch.float32, "eager": eager,
                                    "compile_seconds": time.perf_counter() - start}
        except Exception as exc:  # noqa: BLE001 - a compiler failure is this row's result
            model.backend.encoder = eager
            runs["umr_compiled"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return runs


def utilisation(model, texts: list[str], seconds: float, dtype: torch.dtype, peaks: dict) -> dict:
    """MFU of one umr row: counted FLOPs of the same call, and the same-dtype GEMM peak at the
    model's shape (its mean tokens per forward x hidden x intermediate), measured now."""
    flops = counted_flops(lambda: model.encode_candidates(texts, show_progress_bar=False))
    costs = [model._cost(Item.candidate(t)) for t in texts]
    plan = plan_batches(costs, max_items=model.batch_size, budget=model.cost_budget)
    tokens_per_forward = round(sum(costs) / len(plan))
    hidden = model.backend.encoder.dim
    shape = (tokens_per_forward, hidden, 4 * hidden)
    if (dtype, shape) not in peaks:
        peaks[(dtype, shape)] = gemm_peak(dtype, *shape, seconds=1.0)
    peak = peaks[(dtype, shape)]
    return {"flops": flops, "achieved_gflops": flops / seconds / 1e9, "peak_gflops": peak / 1e9,
            "peak_shape": list(shape), "mfu": mfu(flops, seconds, peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 sentences, one repeat")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile row")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    n = args.items or (300 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 2)
    texts = sentences(n, random.Random(1), 3, 120)

    runs = sentence_transformers_runs(texts)
    runs.update(umr_runs(texts, compile_too=not args.no_compile))
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        runs["onnxruntime"] = {"error": "not measured: needs the bench extra (pip install -e '.[bench]': onnx, "
                                        "onnxruntime)"}
    else:
        try:
            with tempfile.TemporaryDirectory(prefix="umr-onnx-") as workdir:  # sessions hold their graphs
                runs.update(onnx_runs(texts, Path(workdir)))
        except Exception as exc:  # noqa: BLE001 - an export failure is this row's result
            runs["onnxruntime"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    timed = time_rows({name: run["run"] for name, run in runs.items() if "run" in run}, repeats)
    base_seconds, reference = timed["st_fp32"]
    peaks: dict = {}
    rows = {}
    for name, run in runs.items():
        if "error" in run:
            rows[name] = {"error": run["error"]}
            continue
        seconds, vectors = timed[name]
        rows[name] = {"items_per_s": n / seconds, "ratio": base_seconds / seconds,
                      "worst_cosine": worst_cosine(vectors, reference),
                      **({"compile_seconds": run["compile_seconds"]} if "compile_seconds" in run else {})}
        if "model" in run:
            if "eager" in run:  # FLOPs are counted on the eager encoder: the same computation
                run["model"].backend.encoder = run["eager"]
            rows[name].update(utilisation(run["model"], texts, seconds, run["dtype"], peaks))

    print(f"{'row':<18} {'items/s':>9} {'x st_fp32':>9} {'worst cos':>10} {'GFLOP/s':>8} {'peak':>7} {'MFU':>6}")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<18} {row['error']}")
            continue
        util = (f"{row['achieved_gflops']:>8.1f} {row['peak_gflops']:>7.1f} {row['mfu']:>6.1%}"
                if "mfu" in row else "")
        print(f"{name:<18} {row['items_per_s']:>9.1f} {row['ratio']:>8.2f}x {row['worst_cosine']:>10.6f} {util}")
    tokens = sum(len(t) for t in texts)
    meta = {**machine(), "native_bf16_matmul": native_bf16_matmul(), "UMR_CPU_BF16": cpu_bf16_setting(),
            "light_default_dtype": str(umr.load_model("minilm").backend.dtype).removeprefix("torch."),
            "items": n, "characters": tokens, "repeats": repeats, "quick": args.quick,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, **rows}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
