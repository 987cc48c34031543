"""What a run logs as it goes: ``metrics.csv``, TensorBoard scalars, ``eval.jsonl`` and ``loss.png``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, ClassVar


def has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class MetricsLog:
    """``metrics.csv`` (rewritten from the kept rows on resume), TensorBoard, and ``loss.png`` at the end."""

    FIELDS: ClassVar[list[str]] = ["step", "epoch", "loss", "lr", "temperature", "examples_per_s"]

    def __init__(self, output: Path, *, enabled: bool, keep: list[dict[str, Any]]):
        self.enabled = enabled
        self.output = output
        self.rows = keep
        self.writer = None
        if not enabled:
            return
        self.csv_file = (output / "metrics.csv").open("w", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=self.FIELDS)
        self.csv.writeheader()
        for row in keep:
            self.csv.writerow(row)
        if has_tensorboard():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=len(keep) + 1 if keep else None)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.csv.writerow(row)
        self.csv_file.flush()
        if self.writer is not None:
            for key in ("loss", "lr", "temperature", "examples_per_s"):
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def write_eval(self, step: int, scores: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in scores.items():
                self.writer.add_scalar(f"eval/{key}", value, step)
        with (self.output / "eval.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **scores}) + "\n")

    def close(self, *, plot: bool) -> None:
        if not self.enabled:
            return
        self.csv_file.close()
        if self.writer is not None:
            self.writer.close()
        if plot and self.rows:
            plot_metrics(self.rows, self.output / "loss.png")


def plot_metrics(rows: list[dict[str, Any]], path: Path) -> bool:
    """Loss and learning rate against the step; False when matplotlib is missing (``umr[eval]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(steps, [r["loss"] for r in rows])
    top.set_ylabel("loss")
    bottom.plot(steps, [r["lr"] for r in rows], color="tab:orange")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
