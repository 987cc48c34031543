"""Compact vectors: recall@10, queries/s and resident memory of int8 and binary (+ rescoring)
against float32 exact search, on 1M embedding-like 384-d vectors (``umr.core.quantize``, ``umr.index.quantized``).

Data. Embedding 1M texts on a 2-core CPU takes hours, so the vectors are generated to look like
real ones: ``--real`` generated sentences (full: 50,000; ``--quick``: 5,000) are embedded with
the bundled all-MiniLM-L6-v2 (cached under ``$UMR_CACHE/benchmarks``), and a Gaussian mixture is
fitted to them: spherical k-means centroids (one per 8 sentences, 10 iterations), each weighted by
its cluster's size, and the covariance of the residuals around their centroids, shared by all
clusters. A vector is a centroid drawn by weight plus a residual drawn from that covariance,
L2-normalised. A single Gaussian with the vectors' covariance has the same spectrum but no
neighbourhoods (its nearest neighbours are barely nearer than the rest), which makes every
compact code look far worse than on real vectors; the mixture keeps both. The output's fidelity
table measures the same things on the real vectors and on as many generated ones, so the reader
can judge the stand-in. Queries are held-out draws of the same mixture.

Configurations, each built and measured in a fresh process (its memory is its own):

* ``float32-faiss``: the rows in a faiss ``IndexFlatIP`` (what the embedded index holds today);
* ``float32-blocks``: the same rows searched by ``umr.index.quantized.knn_ip`` (blocks of rows times
  the queries by BLAS, a running top-k), which batches much faster than faiss's flat search here;
  the float32 baseline of each speed ratio is the faster of the two;
* ``int8``: ``PerDimensionInt8`` calibrated on the first 100,000 rows (as on an index's first
  commits; values beyond that range are clipped and counted), the codes in a faiss 8-bit
  scalar-quantizer index, searched by ``int8_search`` (float32 queries against decoded rows);
* ``int8-rescore``: int8 candidates, ``--rescore-k`` of them, rescored against the float32 rows;
* ``binary-rescore``: sign bits in a faiss ``IndexBinaryFlat`` (padded from 48 to 64 bytes, as the
  index pads them: ``umr.index.quantized.padded_width``), the ``--rescore-k`` (default
  ``max(20k, 200)``) nearest in Hamming distance rescored exactly against the float32 rows, read
  on demand from a memory-mapped ``.npy``;
* ``binary``: the Hamming top-k alone.

What ``umr index`` ships: ``--quantize int8`` and ``--quantize binary`` rescore
``default_rescore_k(k)`` candidates unless ``--rescore-k`` says otherwise, so ``int8-rescore`` and
``binary-rescore`` at the default depth are the two defaults; ``int8`` and ``binary`` are
``--rescore-k 0``. Each row is checked against its target (int8's for both int8 rows, binary +
rescore's for that row) and marked PASS or FAIL in the table and the JSON (``verdict``,
``checks``); ``index_defaults`` gives the verdict of each ``--quantize`` default.

Measured: recall@10 against ``float32-faiss``'s results; queries/s with all queries in one batch
and one query at a time (the server's case); resident memory as **RssAnon** (private pages) after
building and searching, less the same process's RssAnon before building: memory-mapped float rows
read for rescoring are file-backed pages (RssFile, reported beside it), shared page cache the
kernel can drop, not memory the index holds. glibc's mmap threshold is fixed
(``MALLOC_MMAP_THRESHOLD_``) so freed temporary arrays leave the resident set. The float rows
were just written, so rescoring reads them from the page cache (a cold disk would add its seek
times). Threads: ``--threads`` (default 1) for faiss and BLAS. The load average and the CPU's
SIMD flags are recorded: the machine is shared.

    .venv/bin/python benchmarks/quantized.py --quick   # 100k rows, 5k sentences: minutes
    .venv/bin/python benchmarks/quantized.py           # 1M rows, 50k sentences (~10 min to embed once)

Prints a table and writes ``benchmarks/results/quantized.json`` (``quantized.quick.json`` with
--quick).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from umr.core import quantize as qc
from umr.index import quantized as qi

MB = 1024 * 1024
#: rows calibrated on for int8, as on an index's first commits
CALIBRATION_ROWS = 100_000
#: rows generated, written and encoded per step
CHUNK = 100_000
CONFIGS = ("float32-faiss", "float32-blocks", "int8", "int8-rescore", "binary-rescore", "binary")
FLOAT_CONFIGS = ("float32-faiss", "float32-blocks")
#: other rescoring depths each rescoring configuration also measures (batched)
DEPTH_SWEEP = {"int8-rescore": (20, 40), "binary-rescore": (20, 40, 60, 100, 400)}
#: issue 23's bars: (the result's key, the bound, whether it is a lower bound)
INT8_TARGET = (("recall_at_k", 0.99, True), ("memory_vs_float", 0.3, False))
BINARY_TARGET = (("recall_at_k", 0.95, True), ("memory_vs_float", 0.1, False), ("batch_vs_float", 2.0, True),
                 ("single_vs_float", 2.0, True))


def roles(rescore_k: int, k: int) -> dict[str, tuple[str, tuple | None, str | None]]:
    """Each configuration as ``umr index`` knows it: (what it is, the target it is held to, the
    ``--quantize`` value whose default it is). The index rescores ``default_rescore_k(k)``
    candidates unless told otherwise (``--rescore-k N``; 0: the codes' ranking as it is)."""
    default = qi.default_rescore_k(k)
    depth = f"rescore {rescore_k}" + ("" if rescore_k == default else f", not the index's default {default}")
    is_default = rescore_k == default
    return {
        "float32-faiss": ("no --quantize: float32 rows, faiss IndexFlatIP", None, None),
        "float32-blocks": ("float32 rows by BLAS blocks (a speed baseline only)", None, None),
        "int8": ("--quantize int8 --rescore-k 0: int8 codes alone", INT8_TARGET, None),
        "int8-rescore": (f"--quantize int8 (int8 codes, {depth} from the float32 rows on disk)", INT8_TARGET,
                         "int8" if is_default else None),
        "binary-rescore": (f"--quantize binary (sign bits, {depth})", BINARY_TARGET,
                           "binary" if is_default else None),
        "binary": ("--quantize binary --rescore-k 0: sign bits alone", None, None),
    }


def verdict(row: dict, target: tuple | None) -> tuple[dict[str, bool], str]:
    """Each bar of ``target`` checked on ``row``, and PASS / FAIL (``-`` for a row without one)."""
    if target is None:
        return {}, "-"
    checks = {f"{key} {'>=' if at_least else '<='} {bound:g}": (row[key] >= bound if at_least else row[key] <= bound)
              for key, bound, at_least in target}
    return checks, "PASS" if all(checks.values()) else "FAIL"

SUBJECTS = ("the doctor|a young teacher|my neighbour|the old fisherman|a software engineer|the city council|"
            "a small startup|the orchestra|our football team|the museum curator|a retired pilot|the local bakery|"
            "the research group|a travelling salesman|the farmer|the hospital|a stray cat|the children|the police|"
            "a famous chef|the librarian|a group of tourists|the students|the climbers|an artist|the bank|"
            "a journalist|the scientists|my grandmother|the mayor|a robot|the ship's captain|a nurse|"
            "the firefighters|an astronaut|the gardener|the lawyer|a teenager|the architect|the twins").split("|")
VERBS = ("repaired|discovered|painted|sold|cooked|studied|photographed|designed|cancelled|celebrated|"
         "investigated|built|lost|found|delivered|explained|criticised|recommended|ignored|planted|translated|"
         "measured|borrowed|cleaned|tested|announced|visited|described|predicted|donated").split("|")
ADJECTIVES = ("red|ancient|broken|expensive|tiny|enormous|quiet|noisy|digital|wooden|frozen|famous|secret|"
              "modern|rare|dangerous|beautiful|cheap|complicated|electric|medieval|fragile|heavy|bright|dusty|"
              "organic|portable|colourful|strange|reliable").split("|")
OBJECTS = ("bicycle|painting|bridge|recipe|telescope|contract|violin|garden|satellite|manuscript|engine|"
           "vaccine|website|cathedral|map|camera|sculpture|spreadsheet|tractor|novel|microscope|piano|database|"
           "lighthouse|volcano sample|train ticket|wedding cake|solar panel|chess set|fossil|river boat|algorithm|"
           "blanket|passport|umbrella|sandwich|guitar|laptop|tent|clock").split("|")
PLACES = ("in Paris|near the harbour|at the market|in the mountains|during the storm|after the meeting|"
          "before breakfast|in the laboratory|on the moon|at the airport|in a small village|under the bridge|"
          "at the festival|in the desert|by the lake|in the classroom|on the train|at midnight|in the hospital|"
          "in the kitchen|on the roof|in Tokyo|at the stadium|in the forest").split("|")
ENDINGS = ("because it was urgent|to everyone's surprise|for the first time|without any help|after many years|"
           "as a gift|to save money|for a documentary|despite the rain|with great care|in record time|"
           "for the annual report|as part of an experiment|while nobody was watching|to win the prize|").split("|")


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences from word lists: topics overlap, so near neighbours exist."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), "the", rng.choice(ADJECTIVES), rng.choice(OBJECTS),
                 rng.choice(PLACES), rng.choice(ENDINGS)]
        text = " ".join(w for w in words if w) + "."
        out.setdefault(text[0].upper() + text[1:])
    return list(out)


def real_vectors(n: int, cache: Path) -> np.ndarray:
    """minilm vectors of ``n`` generated sentences, embedded once and cached."""
    path = cache / f"quantized-minilm-{n}.npy"
    if path.is_file():
        print(f"real vectors: {path} (cached)", flush=True)
        return np.load(path)
    import umr

    texts = sentences(n)
    started = time.perf_counter()
    print(f"embedding {n:,} generated sentences with minilm ...", flush=True)
    vectors = umr.load_model("minilm").encode_candidates(texts, batch_size=256).astype(np.float32)
    print(f"embedded in {time.perf_counter() - started:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


class Mixture:
    """A Gaussian mixture fitted to real vectors: k-means centroids weighted by cluster size, one
    shared residual covariance; samples are L2-normalised."""

    def __init__(self, real: np.ndarray, per_cluster: int = 8, seed: int = 1) -> None:
        import faiss

        self.clusters = max(2, len(real) // per_cluster)
        kmeans = faiss.Kmeans(real.shape[1], self.clusters, niter=10, seed=seed, spherical=True,
                              max_points_per_centroid=per_cluster * 10, verbose=False)
        kmeans.train(real)
        _, assigned = kmeans.index.search(real, 1)
        assigned = assigned[:, 0]
        self.centroids = kmeans.centroids.astype(np.float32)
        self.weights = np.bincount(assigned, minlength=self.clusters) / len(real)
        residuals = real - self.centroids[assigned]
        covariance = np.cov(residuals.T) + 1e-9 * np.eye(real.shape[1])
        self.factor = np.linalg.cholesky(covariance).T.astype(np.float32)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.centroids.shape[1]), np.float32)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x = self.centroids[rng.choice(self.clusters, m, p=self.weights)]
            x += rng.standard_normal((m, out.shape[1]), dtype=np.float32) @ self.factor
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def neighbourhood(corpus: np.ndarray, queries: np.ndarray, k: int, rescore_k: int) -> dict:
    """What the fidelity table compares: how near the neighbours are, and each code's recall."""
    top_scores, truth = qi.knn_ip(queries, corpus, k)
    codec = qc.PerDimensionInt8.fit(corpus)
    int8 = qi.int8_index(codec, codec.encode(corpus).codes)
    bits = qi.binary_index(qc.sign_bits(corpus))
    _, candidates = qi.hamming_search(bits, qc.sign_bits(queries), rescore_k)
    return {"rows": len(corpus), "top1_cosine": float(top_scores[:, 0].mean()),
            f"top{k}_cosine": float(top_scores[:, k - 1].mean()),
            "int8_recall": recall(qi.int8_search(int8, queries, k)[1], truth),
            "binary_recall": recall(candidates[:, :k], truth),
            "binary_rescore_recall": recall(qi.rescore(queries, candidates, corpus, k)[1], truth)}


# -- one configuration, in its own process -----------------------------------------------------------


def status() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def build(config: str, corpus: np.ndarray) -> tuple[object, dict]:
    """The configuration's in-memory structure, built from the memory-mapped corpus a chunk at a
    time, as its first stage ``(queries, depth) -> row ids``."""
    import faiss

    n, dim = corpus.shape
    info: dict = {}
    if config == "float32-faiss":
        index = faiss.IndexFlatIP(dim)
        for start in range(0, n, CHUNK):
            index.add(np.ascontiguousarray(corpus[start:start + CHUNK]))
        return (lambda q, depth: index.search(q, depth)[1]), info
    if config == "float32-blocks":
        rows = np.empty((n, dim), np.float32)
        for start in range(0, n, CHUNK):
            rows[start:start + CHUNK] = corpus[start:start + CHUNK]
        return (lambda q, depth: qi.knn_ip(q, rows, depth)[1]), info
    if config.startswith("int8"):
        codec = qc.PerDimensionInt8.fit(corpus[:CALIBRATION_ROWS])
        index = qi.int8_index(codec)
        clipped = 0
        for start in range(0, n, CHUNK):
            codes, clipped_here = codec.encode(corpus[start:start + CHUNK])
            index.add_sa_codes(np.ascontiguousarray(qc.unsigned(codes)))
            clipped += clipped_here
        info.update(calibration_rows=codec.rows, clipped_values=clipped, clipped_share=clipped / (n * dim))
        return (lambda q, depth: qi.int8_search(index, q, depth)[1]), info
    index = qi.binary_index(dim=dim)
    for start in range(0, n, CHUNK):
        qi.add_bits(index, qc.sign_bits(corpus[start:start + CHUNK]))
    return (lambda q, depth: qi.hamming_search(index, qc.sign_bits(q), depth)[1]), info


def probe(args) -> None:
    """Build one configuration, search, and print what it measured as one JSON line."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    work = args.work
    queries = np.load(work / "queries.npy")
    before = status()
    load_before = os.getloadavg()
    corpus = np.load(work / "corpus.npy", mmap_mode="r")
    started = time.perf_counter()
    first_stage, info = build(args.probe, corpus)
    build_s = time.perf_counter() - started
    del corpus  # unmapped: the pages read while building leave this process's resident set
    rescoring = args.probe.endswith("-rescore")
    rows = np.load(work / "corpus.npy", mmap_mode="r") if rescoring else None

    def search(q: np.ndarray) -> np.ndarray:
        if not rescoring:
            return first_stage(q, args.k)
        return qi.rescore(q, first_stage(q, args.rescore_k), rows, args.k)[1]

    built = status()
    search(queries[:1])  # warm-up: lazily built structures, first page faults
    started = time.perf_counter()
    batch_ids = search(queries)
    batch_s = time.perf_counter() - started
    single_ids = np.empty((args.single, args.k), np.int64)
    started = time.perf_counter()
    for i in range(args.single):
        single_ids[i] = search(queries[i:i + 1])[0]
    single_s = time.perf_counter() - started
    after = status()
    np.save(work / f"ids-{args.probe}.npy", batch_ids)
    np.save(work / f"single-{args.probe}.npy", single_ids)
    depths = {}
    if rescoring:  # other depths, batched: what the depth knob buys and costs
        for depth in DEPTH_SWEEP[args.probe]:
            started = time.perf_counter()
            ids = qi.rescore(queries, first_stage(queries, depth), rows, args.k)[1]
            depths[depth] = len(queries) / (time.perf_counter() - started)
            np.save(work / f"depth-{args.probe}-{depth}.npy", ids)
    print(json.dumps({"config": args.probe, "build_s": build_s, "batch_qps": len(queries) / batch_s,
                      "single_qps": args.single / single_s, "rss_anon_before": before["RssAnon"],
                      "rss_anon_built": built["RssAnon"], "rss_anon_after": after["RssAnon"],
                      "rss_file_before": before["RssFile"], "rss_file_after": after["RssFile"], "vm_rss_after": after["VmRSS"], "vm_hwm": after["VmHWM"],
                      "index_bytes": after["RssAnon"] - before["RssAnon"],
                      "depth_batch_qps": depths,
                      "load_average": {"before": load_before, "after": os.getloadavg()}, **info}))


def run_probe(config: str, args, work: Path) -> dict:
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               MALLOC_MMAP_THRESHOLD_="131072", PYTHONPATH=str(ROOT / "src"))
    command = [sys.executable, __file__, "--probe", config, "--work", str(work), "--k", str(args.k),
               "--rescore-k", str(args.rescore_k), "--single", str(args.single), "--threads", threads]
    out = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the whole run ---------------------------------------------------------------------------------------


def cpu() -> dict:
    from machine import machine

    flags: set[str] = set()
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ("sse4_2", "popcnt", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
              "avx512_vpopcntdq", "avx512_bf16", "amx_bf16", "amx_int8")
    return {**machine(), "simd_flags": [f for f in wanted if f in flags]}


def run(args) -> dict:
    work = args.work or Path(tempfile.mkdtemp(prefix="umr-bench-quantized-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    held_out = min(1000, args.real // 10)
    real = real_vectors(args.real + held_out, args.cache)
    real_corpus, real_queries = real[:args.real], real[args.real:]
    t = time.perf_counter()
    mixture = Mixture(real_corpus)
    fit_s = time.perf_counter() - t
    print(f"mixture of {mixture.clusters:,} clusters fitted to {args.real:,} real vectors in {fit_s:.0f} s", flush=True)
    fidelity = {"real": neighbourhood(real_corpus, real_queries, args.k, args.rescore_k),
                "generated": neighbourhood(mixture.sample(args.real, seed=7), mixture.sample(held_out, seed=8),
                                           args.k, args.rescore_k)}
    corpus = np.lib.format.open_memmap(work / "corpus.npy", mode="w+", dtype=np.float32, shape=(args.rows, 384))
    for start in range(0, args.rows, CHUNK):
        stop = min(start + CHUNK, args.rows)
        corpus[start:stop] = mixture.sample(stop - start, seed=1000 + start // CHUNK)
    corpus.flush()
    del corpus
    np.save(work / "queries.npy", mixture.sample(args.queries, seed=2))
    print(f"{args.rows:,} vectors and {args.queries:,} queries generated", flush=True)

    results = {}
    for config in CONFIGS:
        print(f"measuring {config} ...", flush=True)
        results[config] = run_probe(config, args, work)
    truth = np.load(work / "ids-float32-faiss.npy")
    for config, row in results.items():
        row["recall_at_k"] = recall(np.load(work / f"ids-{config}.npy"), truth)
        row["single_recall_at_k"] = recall(np.load(work / f"single-{config}.npy"), truth[:args.single])
    for config in ("int8-rescore", "binary-rescore"):
        row = results[config]
        row["depths"] = {str(d): {"recall_at_k": recall(np.load(work / f"depth-{config}-{d}.npy"), truth),
                                  "batch_qps": qps} for d, qps in row.pop("depth_batch_qps").items()}
        row["depths"][str(args.rescore_k)] = {"recall_at_k": row["recall_at_k"], "batch_qps": row["batch_qps"]}

    base_batch = max(results[c]["batch_qps"] for c in FLOAT_CONFIGS)
    base_single = max(results[c]["single_qps"] for c in FLOAT_CONFIGS)
    base_bytes = results["float32-faiss"]["index_bytes"]
    for row in results.values():
        row["batch_vs_float"] = row["batch_qps"] / base_batch
        row["single_vs_float"] = row["single_qps"] / base_single
        row["memory_vs_float"] = row["index_bytes"] / base_bytes
    defaults: dict[str, str] = {}
    for config, (what, target, default_for) in roles(args.rescore_k, args.k).items():
        row = results[config]
        row["as_index"] = what
        row["index_default_for"] = default_for
        row["checks"], row["verdict"] = verdict(row, target)
        if default_for:
            defaults[f"--quantize {default_for}"] = row["verdict"]
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return {"benchmark": "quantized", "quick": args.quick, "rows": args.rows, "dim": 384, "k": args.k,
            "rescore_k": args.rescore_k, "queries": args.queries, "single_queries": args.single,
            "threads": args.threads, "calibration_rows": CALIBRATION_ROWS,
            "data": {"method": "minilm vectors of generated sentences; a Gaussian mixture fitted to them (spherical "
                               "k-means, one centroid per 8 vectors, weights by cluster size, one shared residual "
                               "covariance), sampled and L2-normalised; queries are held-out samples",
                     "real_sentences": args.real, "clusters": mixture.clusters, "fit_s": fit_s,
                     "fidelity": fidelity},
            "baseline": {"batch_qps": base_batch, "single_qps": base_single, "index_bytes": base_bytes,
                         "note": "speed: the faster float32 exact configuration in each mode; memory: float32-faiss"},
            "configs": results, "index_defaults": defaults,
            "targets_met": len(defaults) == 2 and all(v == "PASS" for v in defaults.values()),
            "machine": cpu(), "seconds": time.time() - started}


def print_table(doc: dict) -> None:
    fid = doc["data"]["fidelity"]
    print(f"\nfidelity of the generated vectors ({doc['data']['real_sentences']:,} of each; recall@{doc['k']} "
          f"against float32 exact; binary + rescore at depth {doc['rescore_k']}):")
    print("| vectors | top-1 cosine | top-10 cosine | int8 | binary | binary + rescore |")
    print("|---|---:|---:|---:|---:|---:|")
    top_k = f"top{doc['k']}_cosine"
    for name, row in fid.items():
        print(f"| {name} | {row['top1_cosine']:.3f} | {row[top_k]:.3f} | {row['int8_recall']:.4f} | "
              f"{row['binary_recall']:.4f} | {row['binary_rescore_recall']:.4f} |")
    print(f"\n{doc['rows']:,} x {doc['dim']} vectors, {doc['queries']:,} queries in one batch, {doc['single_queries']} "
          f"one at a time, {doc['threads']} thread(s), k={doc['k']}, rescore_k={doc['rescore_k']}; CPU "
          f"{doc['machine']['cpu']} ({' '.join(doc['machine']['simd_flags'])})")
    print("| configuration | as `umr index` runs it | recall@10 | batch q/s | x float | single q/s | x float | "
          "RssAnon MiB | x float | file pages MiB | build s | target |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, r in doc["configs"].items():
        shipped = "**the default**: " if r["index_default_for"] else ""
        marks = "; ".join(f"{check} {'✓' if ok else '✗'}" for check, ok in r["checks"].items())
        target = f"**{r['verdict']}** ({marks})" if r["checks"] else "-"
        print(f"| {name} | {shipped}{r['as_index']} | {r['recall_at_k']:.4f} | {r['batch_qps']:.1f} | "
              f"{r['batch_vs_float']:.2f} | {r['single_qps']:.1f} | {r['single_vs_float']:.2f} | "
              f"{r['index_bytes'] / MB:.1f} | {r['memory_vs_float']:.3f} | "
              f"{(r['rss_file_after'] - r['rss_file_before']) / MB:.1f} | {r['build_s']:.1f} | {target} |")
    for name in ("int8-rescore", "binary-rescore"):
        depths = sorted(doc["configs"][name]["depths"].items(), key=lambda item: int(item[0]))
        print(f"{name} by depth (recall@10, batch q/s): "
              + ", ".join(f"{d}: {v['recall_at_k']:.4f} / {v['batch_qps']:.0f}" for d, v in depths))
    print(f"int8 values clipped (calibrated on the first {doc['calibration_rows']:,} rows): "
          f"{doc['configs']['int8']['clipped_share'] * 100:.4f}%")
    for name, row in doc["configs"].items():
        for check, met in row["checks"].items():
            print(f"  {name}: {check}: {'PASS' if met else 'FAIL'}")
    shipped = (", ".join(f"{flag}: {v}" for flag, v in doc["index_defaults"].items())
               or "none measured at the default depth")
    print(f"what `umr index --quantize` ships by default: {shipped}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k rows from 5k real sentences")
    parser.add_argument("--rows", type=int, default=None, help="corpus rows (default 1M; quick 100k)")
    parser.add_argument("--real", type=int, default=None, help="real sentences embedded (default 50k; quick 5k)")
    parser.add_argument("--queries", type=int, default=None, help="queries in the batch (default 1000; quick 200)")
    parser.add_argument("--single", type=int, default=None, help="queries one at a time (default 200; quick 50)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rescore-k", type=int, default=None, help="candidates rescored (default max(20k, 200))")
    parser.add_argument("--threads", type=int, default=1, help="faiss and BLAS threads")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("UMR_CACHE") or Path.home() / ".cache" / "umr")
                        / "benchmarks", help="where the embedded real vectors are kept")
    parser.add_argument("--work", type=Path, default=None, help="where the vectors are written (kept if given)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--probe", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rescore_k = args.rescore_k or qi.default_rescore_k(args.k)
    if args.probe:
        args.single = args.single or 0
        probe(args)
        return 0
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.real = args.real or (5_000 if args.quick else 50_000)
    args.queries = args.queries or (200 if args.quick else 1000)
    args.single = min(args.single or (50 if args.quick else 200), args.queries)
    doc = run(args)
    print_table(doc)
    output = args.output or ROOT / "benchmarks" / "results" / ("quantized.quick.json" if args.quick else "quantized.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
