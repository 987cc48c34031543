"""The import paths users had before umr.core keep giving the same objects (re-export shims and
names the old modules still import)."""

import importlib

import pytest

from umr.core import devices, entries, fingerprint, images, items, registry, results, uniir
from umr.train import errors as train_errors
from umr.train import precision as train_precision

MOVED = [
    ("umr.types", items, ["ImageSource", "Item", "ItemError", "Modality", "SINGLE_VALUES", "as_items"]),
    ("umr.fingerprint", fingerprint, ["DIGEST_SIZE", "FileDigests", "file_digest", "image_key", "item_fingerprint"]),
    ("umr.images", images, ["MAX_IMAGE_PIXELS", "decode_image", "image_size", "load_image"]),
    ("umr.uniir", uniir, ["format_string"]),
    ("umr.models.cpu", devices, ["CPU_BF16_ENV", "CpuSwitchError", "bf16_by_default", "cpu_bf16_setting",
                                 "cpu_default_dtype", "cpu_switch_environment", "lists_native_bf16",
                                 "native_bf16_matmul"]),
    ("umr.models.base", devices, ["DTYPES", "resolve_dtype"]),
    ("umr.models.base", results, ["EmbedResult"]),
    ("umr.models", results, ["EmbedResult"]),
    ("umr", results, ["EmbedResult"]),
    ("umr", items, ["Item", "ItemError", "Modality"]),
    ("umr.models.registry", devices, ["check_device"]),
    ("umr.models.registry", registry, ["ModelSpec", "UnsupportedOption"]),
    ("umr.models.catalog", registry, ["ModelSpec"]),
    ("umr.models", registry, ["ModelSpec"]),
    ("umr.index", results, ["Result", "Summary"]),
    ("umr.index.index", results, ["Result", "Summary"]),
    ("umr.index.index", devices, ["check_device"]),
    ("umr.index.base", results, ["Hit"]),
    ("umr.index.store", results, ["Hit"]),
    ("umr.data.corpus", entries, ["Entry", "ReadReport"]),
    ("umr.train.trainer", train_errors, ["NonFiniteError", "TrainingError"]),
    ("umr.train.trainer", train_precision, ["load_options"]),
    ("umr.train", train_errors, ["TrainingError"]),
]


@pytest.mark.parametrize("old, new, names", MOVED, ids=[f"{old}:{names[0]}" for old, _, names in MOVED])
def test_an_old_import_path_gives_the_moved_object(old, new, names):
    module = importlib.import_module(old)
    for name in names:
        assert getattr(module, name) is getattr(new, name), f"{old}.{name}"
