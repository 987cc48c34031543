"""Compact vector storage: int8 codes or sign bits in memory, full-precision rows on disk.

What an index created with ``quantize="int8"`` or ``"binary"`` keeps instead of a float32 matrix
in memory. A folder holds:

* ``vectors.f32``: every row as float32, appended as rows arrive and memory-mapped read-only for
  rescoring, so only the rows a search rescores are read (they count as page cache, not as the
  process's own memory);
* ``codes.u8``: the compact codes (int8 levels or sign bits), read back into memory on open;
* ``compact.json``: the kind, the width, the row count and, for int8, the calibration.

Search: the ``rescore_k`` best rows by the codes (Hamming distance for sign bits, a float query
against decoded int8 rows), rescored exactly against their float32 rows; ``rescore_k=0`` returns
the compact ranking as it is. A row mask (deletes, filters) applies to the first stage.

int8 calibration: each dimension's min/max over the rows of the first :meth:`CompactVectors.add`
(:class:`~umr.core.quantize.PerDimensionInt8`). Later rows beyond that range are clipped and
counted; once more than 0.1% of the values encoded since were clipped and the rows have at least
doubled, the codec is re-fitted on every row and all codes re-encoded from ``vectors.f32``
(amortised O(n)); :meth:`CompactVectors.recalibrate` does it on demand (e.g. in compaction).

Not yet wired into :class:`~umr.index.store.FlatStore` (being split into a package); the store
can hold one of these per segment, or one for the whole index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np

from ..core.atomic import write_bytes_atomic, write_text_atomic
from ..core.quantize import Int8Codec, PerDimensionInt8, recalibration_due, sign_bits, signed, unsigned
from .quantized import (binary_index, default_rescore_k, hamming_search, index_codes, int8_index, int8_search,
                        rescore)

Quantize = Literal["int8", "binary"]
QUANTIZE: tuple[str, ...] = ("int8", "binary")
META, ROWS, CODES = "compact.json", "vectors.f32", "codes.u8"


class CompactVectors:
    """Rows of one width kept as compact codes in memory and float32 on disk (see the module)."""

    def __init__(self, folder: Path, kind: Quantize, dim: int, codec: Int8Codec | None = None,
                 encoded: int = 0, clipped: int = 0) -> None:
        self.folder, self.kind, self.dim = Path(folder), kind, int(dim)
        self.codec = codec
        #: values encoded and clipped since the int8 calibration (when to re-fit)
        self.encoded, self.clipped = encoded, clipped
        self.index = None  # built on the first add (int8 needs its calibration first)
        self._rows: np.memmap | None = None

    # -- create / open / save ---------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, kind: Quantize, dim: int) -> CompactVectors:
        """An empty store in ``folder`` (created; refused if it holds one already)."""
        if kind not in QUANTIZE:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}, not {kind!r}")
        folder = Path(folder)
        if (folder / META).exists():
            raise FileExistsError(f"{folder} already holds compact vectors")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ROWS).write_bytes(b"")
        store = cls(folder, kind, dim)
        store.save()
        return store

    @classmethod
    def open(cls, folder: str | Path) -> CompactVectors:
        """The store saved in ``folder``: codes read into memory, float rows memory-mapped.
        Rows written to disk after the last :meth:`save` (a crash mid-add) are dropped."""
        folder = Path(folder)
        meta = json.loads((folder / META).read_text())
        codec = Int8Codec.from_json(meta["codec"]) if meta.get("codec") else None
        store = cls(folder, meta["kind"], meta["dim"], codec, meta.get("encoded", 0), meta.get("clipped", 0))
        rows = int(meta["rows"])
        codes = np.fromfile(folder / CODES, np.uint8) if rows else np.zeros(0, np.uint8)
        width = store.code_size
        if codes.size < rows * width or (folder / ROWS).stat().st_size < rows * 4 * store.dim:
            raise ValueError(f"{folder}: the files hold fewer rows than {META} records ({rows})")
        store._build(codes[:rows * width].reshape(rows, width))
        return store

    def save(self) -> None:
        """Record the row count, the calibration and the codes (atomically, after the rows they
        cover are on disk)."""
        write_bytes_atomic(self.folder / CODES, np.ascontiguousarray(self._codes()).tobytes())
        meta = {"kind": self.kind, "dim": self.dim, "rows": len(self), "encoded": self.encoded,
                "clipped": self.clipped, "codec": self.codec.to_json() if self.codec is not None else None}
        write_text_atomic(self.folder / META, json.dumps(meta))

    # -- what it holds ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    @property
    def code_size(self) -> int:
        """Bytes a row takes in memory: ``dim`` for int8, ``ceil(dim / 8)`` for sign bits."""
        return self.dim if self.kind == "int8" else -(-self.dim // 8)

    @property
    def memory_bytes(self) -> int:
        """The codes' bytes, all this store keeps in memory per row (the floats stay on disk)."""
        return len(self) * self.code_size

    @property
    def clipped_share(self) -> float:
        """The share of int8 values clipped since the calibration (0 for sign bits)."""
        return self.clipped / self.encoded if self.encoded else 0.0

    def rows(self) -> np.ndarray:
        """The float32 rows, memory-mapped read-only (nothing is read until used)."""
        if self._rows is None or len(self._rows) != len(self):
            self._rows = (np.memmap(self.folder / ROWS, np.float32, "r", shape=(len(self), self.dim))
                          if len(self) else np.zeros((0, self.dim), np.float32))
        return self._rows

    # -- writing ----------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray) -> None:
        """Append rows: float32 to disk, codes to memory (an int8 store calibrates on its first
        add, of at least 2 rows, and re-fits when clipping says so). Call :meth:`save` to record."""
        x = np.ascontiguousarray(np.atleast_2d(vectors), np.float32)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors have {x.shape[1]} dimensions, the store {self.dim}")
        if not len(x):
            return
        with open(self.folder / ROWS, "r+b") as handle:  # past the rows recorded: a crashed add's are dropped
            handle.seek(len(self) * 4 * self.dim)
            handle.write(x.tobytes())
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
        if self.kind == "binary":
            if self.index is None:
                self.index = binary_index(dim=self.dim)
            self.index.add(sign_bits(x))
            return
        if self.codec is None:
            self.codec = PerDimensionInt8.fit(x)  # refuses fewer than 2 rows
            self.index = int8_index(self.codec)
        codes, clipped = self.codec.encode(x)
        self.index.add_sa_codes(np.ascontiguousarray(unsigned(codes)))
        self.encoded += x.size
        self.clipped += clipped
        if self.needs_recalibration():
            self.recalibrate()

    def needs_recalibration(self) -> bool:
        """Whether clipping since the calibration calls for a re-fit (:func:`~umr.core.quantize.recalibration_due`)."""
        return self.codec is not None and recalibration_due(
            clipped=self.clipped, encoded=self.encoded, rows=len(self), calibrated_rows=self.codec.rows)

    def recalibrate(self) -> None:
        """Re-fit the int8 codec on every row and re-encode them all from the float rows."""
        if self.kind != "int8" or not len(self):
            return
        rows = self.rows()
        self.codec = PerDimensionInt8.fit(rows)
        codes, clipped = self.codec.encode(rows)
        self.index = int8_index(self.codec, codes)
        self.encoded, self.clipped = rows.size, clipped

    # -- searching ----------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, rescore_k: int | None = None,
               mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for each float32 query: (scores descending, row ids; -inf and -1
        where fewer rows qualify). ``rescore_k`` candidates from the codes (default
        ``max(20k, 200)``; 0: no rescoring, the codes' own ranking and, for int8, scores of the
        decoded rows, for sign bits ``dim - 2 * Hamming distance``). ``mask``: rows allowed."""
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if mask is not None and len(mask) != len(self):
            raise ValueError(f"a mask of {len(mask)} rows for a store of {len(self)}")
        if not len(self):
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        depth = default_rescore_k(k) if rescore_k is None else max(int(rescore_k), k if rescore_k else 0)
        first = depth or k
        if self.kind == "binary":
            dist, ids = hamming_search(self.index, sign_bits(q), first, mask=mask)
            scores = np.where(ids >= 0, self.dim - 2 * dist.astype(np.float32), -np.inf).astype(np.float32)
        else:
            scores, ids = int8_search(self.index, q, first, mask=mask)
        if not depth:
            return scores[:, :k], ids[:, :k]
        return rescore(q, ids, self.rows(), k)

    # -- internals ----------------------------------------------------------------------------------

    def _build(self, codes: np.ndarray) -> None:
        if self.kind == "binary":
            self.index = binary_index(codes)
        elif self.codec is not None:
            self.index = int8_index(self.codec, signed(codes))

    def _codes(self) -> np.ndarray:
        return index_codes(self.index) if self.index is not None else np.zeros((0, self.code_size), np.uint8)
