"""What a loaded model *is*, independent of how its name was spelled.

An index and an evaluation cache must know whether two loads give the same vectors. A name
cannot tell: ``./m``, ``../x/m`` and ``/abs/m`` are one model, while a different checkpoint
saved at the same path is another. :class:`ModelIdentity` records where the model was loaded
from (the resolved absolute folder, or the hub id and snapshot revision), its family, a
fingerprint of its files and every option that changes its vectors; :meth:`ModelIdentity.key`
is what caches and indexes compare.

The files fingerprint covers every file's relative name and the digest of its bytes. Small
files (configs, tokenizers) are hashed on every load; large ones (weights) are hashed whole
once per version and remembered by stat signature (:func:`weights_digests`), so a re-load of
unchanged weights costs a ``stat`` while weights changed in place — even one tensor, even with
the modification time set back — give another fingerprint.

The dtype is the one option that may differ between machines without the user asking: a family
whose bfloat16 vectors stay within cosine 0.999 of float32 (``bf16_close``) defaults to
bfloat16 on some CPUs and float32 on others (:mod:`umr.core.devices`). Such a dtype the model
merely *defaulted to* does not make another model: indexes and evaluation caches built on one
machine are used on any other (:attr:`ModelIdentity.dtype_follows_machine`). A dtype chosen
explicitly (``dtype=`` / ``--dtype``), or any dtype of a family that is not bf16-close, is
part of the identity.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.fingerprint import FileDigests, file_digest
from .catalog import REGISTRY

#: files up to this size are hashed on every load; larger ones once per version (stat signature)
SMALL_FILE_BYTES = 16 << 20
#: files that never change what a model computes (docs, code umr does not run, VCS and caches)
_IGNORED_SUFFIXES = {".md", ".py", ".pyc", ".lock"}
_IGNORED_DIRS = {"__pycache__", ".git", ".cache", ".huggingface"}


@dataclass(frozen=True)
class ModelIdentity:
    """A loaded model: where from, which family, which files, which vector-changing options."""

    #: what ``load_model`` was given (a short name, a hub id, or a folder as spelled)
    name: str
    family: str
    #: the resolved absolute folder the weights were read from
    folder: str
    #: the hub id and snapshot revision when the folder is a hub cache snapshot
    hub_id: str | None
    revision: str | None
    #: digest of the model's files (see the module docstring)
    files: str
    dim: int
    #: every option that changes vectors (dtype, image-token bounds, max length, prompts, ...)
    options: dict[str, Any] = field(default_factory=dict)
    #: what ``load_model`` was given besides the name (device left out): loads it the same way again
    load_options: dict[str, Any] = field(default_factory=dict)
    #: the family's bfloat16 vectors stay within cosine 0.999 of float32 (``Embedder.bf16_close``)
    bf16_close: bool = False

    @property
    def dtype_follows_machine(self) -> bool:
        """The dtype was the machine's default (no ``dtype`` was given) for a bf16-close family:
        another machine's default gives interchangeable vectors, so it does not identify the model."""
        return self.bf16_close and "dtype" not in self.load_options

    def key(self) -> str:
        """A stable string that is equal only when two loads give interchangeable vectors.

        The location is left out: the same files copied elsewhere are the same model. A dtype
        that followed the machine's default (:attr:`dtype_follows_machine`) is keyed as float32,
        the reference its bfloat16 vectors are measured against, so such loads share one key on
        every machine (and keep the key they had before bf16 defaults existed).
        """
        options = _plain(self.options)
        if self.dtype_follows_machine and "dtype" in options:
            options["dtype"] = "float32"
        payload = json.dumps([self.family, self.files, self.dim, options], sort_keys=True)
        return f"{self.family}-{hashlib.blake2b(payload.encode(), digest_size=10).hexdigest()}"

    @property
    def source(self) -> str:
        """What to pass to ``load_model`` to load this model again from any working directory."""
        if self.name in REGISTRY or (self.hub_id is not None and self.name == self.hub_id) or not self.folder:
            return self.name
        return self.folder

    def describe(self) -> str:
        where = f"{self.hub_id}@{self.revision[:12]}" if self.hub_id and self.revision else self.folder
        shown = self.name if self.name == where else f"{self.name} ({where})"
        return f"{shown}, files {self.files[:12]}"

    def differences(self, other: "ModelIdentity") -> list[str]:
        """What differs in the vectors, each as ``what: this vs other`` (empty when the keys are
        equal). Dtypes differ only where neither side's followed its machine's default
        (:attr:`dtype_follows_machine`): bfloat16 and float32 vectors of a bf16-close family are
        interchangeable unless both were chosen."""
        out = []
        if self.family != other.family:
            out.append(f"family: {self.family} vs {other.family}")
        if self.files != other.files:
            out.append(f"weights/config files: {self.files[:12]} at {self.folder} vs "
                       f"{other.files[:12]} at {other.folder}")
        if self.dim != other.dim:
            out.append(f"dimension: {self.dim} vs {other.dim}")
        mine, theirs = _plain(self.options), _plain(other.options)
        interchangeable = self.dtype_follows_machine or other.dtype_follows_machine
        for name in sorted(set(mine) | set(theirs)):
            if name == "dtype" and interchangeable:
                continue
            if mine.get(name) != theirs.get(name):
                out.append(f"{name}: {mine.get(name)!r} vs {theirs.get(name)!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "options": _plain(self.options), "load_options": _plain(self.load_options),
                "key": self.key()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelIdentity":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def identify(embedder, folder: str | os.PathLike | None, *, name: str, family: str,
             load_options: dict[str, Any] | None = None) -> ModelIdentity:
    """The identity of ``embedder`` loaded from ``folder`` (None: not loaded from files).

    Its options are the family's :meth:`~umr.models.base.Embedder.vector_options` over the
    load options that were given; an option naming a local file (a CLIP-SF ``.pth``) is
    recorded with that file's signature, since the file's bytes are what matters.
    ``load_options`` holds ``dtype`` only when one was chosen (see :attr:`ModelIdentity.dtype_follows_machine`).
    """
    given = {k: v for k, v in (load_options or {}).items() if k != "device"}
    # the dimension is recorded as ``dim`` itself, not as an option
    options = {k: _option_value(v) for k, v in given.items() if k != "dim"}
    options.update(embedder.vector_options())
    close = bool(embedder.bf16_close)
    if folder is None:
        return ModelIdentity(name=name, family=family, folder="", hub_id=None, revision=None, files="",
                             dim=int(embedder.dim), options=options, load_options=_plain(given), bf16_close=close)
    resolved = Path(folder).expanduser().resolve()
    hub_id, revision = _hub_snapshot(Path(folder).expanduser().absolute())
    return ModelIdentity(name=name, family=family, folder=str(resolved), hub_id=hub_id, revision=revision,
                         files=files_fingerprint(resolved), dim=int(embedder.dim), options=options,
                         load_options=_plain(given), bf16_close=close)


def model_identity(model) -> ModelIdentity:
    """The identity ``load_model`` attached, or a weak one (name, dimension and options only)
    for an embedder built by hand."""
    if model.identity is not None:
        return model.identity
    return identify(model, None, name=str(model.name), family=type(model).__name__)


def files_fingerprint(folder: str | os.PathLike) -> str:
    """Digest of a model folder's files: names and sizes, small files whole, large files' ends."""
    root = Path(folder)
    h = hashlib.blake2b(digest_size=16)
    for path in _model_files(root):
        h.update(path.relative_to(root).as_posix().encode("utf-8", "surrogateescape") + b"\0")
        h.update(_file_signature(path).encode())
    return h.hexdigest()


def _model_files(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in _IGNORED_DIRS and not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() in _IGNORED_SUFFIXES:
                continue
            found.append(path)
    return found


def _file_signature(path: Path) -> str:
    """``size:digest`` of the file's bytes. A large file (weights) is hashed whole once per
    version and remembered by its stat signature (size, mtime, ctime, inode) in
    :func:`weights_digests`, so a tensor changed in place is noticed and a re-load costs a stat."""
    size = path.stat().st_size
    if size <= SMALL_FILE_BYTES:
        return f"{size}:{file_digest(path)}"
    digests = weights_digests()
    digest = file_digest(path, digests=digests)
    if digests is not None:
        digests.save()
    return f"{size}:{digest}"


@functools.lru_cache(maxsize=1)
def weights_digests() -> "FileDigests | None":
    """The digest memo for model files: ``$UMR_CACHE`` or ``~/.cache/umr``, ``weights-digests.sqlite``
    (None where it cannot be opened: then each process hashes large files once, in memory)."""
    root = Path(os.environ.get("UMR_CACHE") or Path.home() / ".cache" / "umr")
    try:
        root.mkdir(parents=True, exist_ok=True)
        return FileDigests(root / "weights-digests.sqlite")
    except Exception:  # noqa: BLE001 - a read-only or broken cache only costs re-hashing
        return None


def _option_value(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)) and value and Path(value).expanduser().is_file():
        path = Path(value).expanduser().resolve()
        return f"{path.name}:{_file_signature(path)}"
    return value


def _hub_snapshot(folder: Path) -> tuple[str | None, str | None]:
    """``(org/name, revision)`` for a Hugging Face cache snapshot folder, else ``(None, None)``."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        repo = folder.parent.parent.name[len("models--"):].replace("--", "/")
        return repo, folder.name
    return None, None


def _plain(value: Any) -> Any:
    """JSON-stable form of option values (tuples as lists, dtypes and paths as text)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
