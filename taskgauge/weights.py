"""Uploaded model weights (issue 16; docs/methods.md §4): what ``POST /model-specs`` accepts as a file, how it is
checked, what is stored, and how a worker gets it back as a local file.

Two forms, told apart by the file's name:

* **``.safetensors`` with an arch spec** (mlp, lenet, cnn, resnet): the form also gives the spec (JSON) and the
  per-sample ``input_shape`` the network takes (``784`` or ``1,28,28``); ``n_classes`` is read from the
  classifier's bias unless given. Every tensor name and shape must equal those of the network
  :func:`estimators.models.build_model` makes (:func:`estimators.models.pretrained.check_spec_weights`). The blob
  is the file as uploaded.
* **``.zip`` of a Hugging Face-style directory**: ``config.json``, ``model.safetensors`` and the tokenizer files
  (``tokenizer.json``, or ``vocab.txt`` + ``tokenizer_config.json``), at the top of the zip or in one folder. It is
  extracted with the checks every uploaded zip gets (:func:`taskgauge.datasets.ingest.images.checked_zip_entries`:
  no ``..``/absolute paths or links, a file count and an expanded-size budget held while decompressing), then
  validated offline with ``transformers`` (a known ``model_type``, no remote code, every encoder tensor shaped as
  the config says, a tokenizer that loads). The blob is a normalised zip of the accepted files (sorted, fixed
  timestamps, stored), so the same model uploaded twice is stored once. The spec becomes
  ``{"arch": "pretrained", "source": "local", "path": "blob:<sha256>", …}``; only the service writes that form.

Refused with 422 and nothing kept: pickles (by name — ``.bin``, ``.pt``, ``.pth``, ``.ckpt``, … — or by their first
bytes, :func:`estimators.models.pretrained.pickle_kind`), weights that do not match the spec or the config, an
unknown architecture, a zip over the limits, a model with more than ``TASKGAUGE_MAX_MODEL_PARAMS`` weights. An upload
over ``TASKGAUGE_MAX_UPLOAD_MB`` is 413 (``app.uploads``). The check runs in the memory-limited ingest subprocess
(:func:`taskgauge.datasets.ingest.isolated.inspect_weights_isolated`): the API process never parses the file.

On a worker, :func:`local_weights` gives the stored weights as a local path under ``DATA_DIR/models/<sha256>``
(extracted once per host; a cache that may be deleted at any time), and the estimators load them once per process
(:func:`estimators.models.pretrained.get_spec_model`, :func:`~estimators.models.pretrained.get_pretrained`).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskgauge.datasets.ingest.errors import Ctx, IngestError, IngestOptions

if TYPE_CHECKING:
    from taskgauge.blobs import BlobStore

SAFETENSORS, HF_ZIP = "safetensors", "hf-zip"
FORMATS = (SAFETENSORS, HF_ZIP)
#: most files a model zip may hold
MAX_MODEL_FILES = 256
#: the ``path`` of a stored pretrained spec names its blob; a worker replaces it with the extracted directory
BLOB_REF = "blob:"
#: spec keys of a Hugging Face upload that only the service sets
_SERVICE_KEYS = ("source", "path")
_SHAPE_SPLIT = re.compile(r"[\s,x×]+")
_CHUNK = 1 << 20


class WeightsForm(BaseModel):
    """What an upload says besides the file (form fields ``spec``, ``input_shape``, ``n_classes``) and the limits the
    service applies (``max_files``, ``max_expanded_mb``, ``max_params``).

    >>> WeightsForm(input_shape="1x28x28").input_shape
    (1, 28, 28)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: dict[str, Any] | None = None
    input_shape: tuple[int, ...] | None = None
    n_classes: int | None = Field(None, ge=1, le=1_000_000)
    max_files: int = Field(MAX_MODEL_FILES, ge=1)
    max_expanded_mb: int = Field(2048, ge=1)
    max_params: int = Field(50_000_000, ge=1)

    @field_validator("input_shape", mode="before")
    @classmethod
    def _parse_shape(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip().strip("[]()")
            if not text:
                return None
            try:
                return tuple(int(p) for p in _SHAPE_SPLIT.split(text) if p)
            except ValueError:
                raise ValueError(
                    f"input_shape must be the per-sample shape as integers, e.g. 784 or 1,28,28; got {v!r}"
                ) from None
        return v

    @field_validator("input_shape")
    @classmethod
    def _check_shape(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and not (1 <= len(v) <= 3 and all(1 <= s <= 1_000_000 for s in v)):
            raise ValueError(f"input_shape must have 1 to 3 sides of 1 to 1,000,000, e.g. 784 or 1,28,28; got {v}")
        return v


def weights_format(filename: str) -> str:
    """The form of an upload from its file name; IngestError (422) for pickles and anything else."""
    from estimators.models.pretrained import PICKLE_SUFFIXES

    name = PurePath(filename.replace("\\", "/")).name or "upload"
    ext = PurePath(name).suffix.lower()
    if ext == ".safetensors":
        return SAFETENSORS
    if ext == ".zip":
        return HF_ZIP
    if ext in PICKLE_SUFFIXES:
        raise IngestError(
            "Pickled weights refused",
            f"'{name}': {ext} files are pickles, which can run code when loaded; save the weights as safetensors "
            "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors'), or "
            "save_pretrained(dir, safe_serialization=True) and zip the directory)",
        )
    raise IngestError(
        "Unsupported weights file",
        f"'{name}': upload .safetensors weights with an arch spec, or a .zip of a Hugging Face-style model "
        "directory (config.json, model.safetensors, tokenizer files)",
    )


def _ctx(filename: str, form: WeightsForm) -> Ctx:
    name = PurePath(filename.replace("\\", "/")).name or "upload"
    return Ctx(name, IngestOptions(max_files=form.max_files, max_expanded_mb=form.max_expanded_mb))


def _refuse(ctx: Ctx, title: str, exc: Exception) -> IngestError:
    return ctx.error(title, str(exc))


def _count_params(ctx: Ctx, shapes: dict[str, tuple[int, ...]], limit: int) -> int:
    n = sum(math.prod(s) for s in shapes.values())
    if n > limit:
        raise ctx.error(
            "Model too large",
            f"the weights hold {n:,} numbers, over the limit of {limit:,} (TASKGAUGE_MAX_MODEL_PARAMS); upload a "
            "smaller model",
        )
    return int(n)


# ------------------------------------------------------------------------------------------- the check (child)


def precheck(filename: str, form: WeightsForm) -> str:
    """The checks that need no file content (the API runs them before the upload is parsed): the form by the file's
    name (pickles refused), the spec and the form fields that form needs. Returns the form; IngestError (422)."""
    fmt = weights_format(filename)
    ctx = _ctx(filename, form)
    if fmt == SAFETENSORS:
        _arch_spec(ctx, form)
    else:
        if form.input_shape is not None or form.n_classes is not None:
            raise ctx.error(
                "Unexpected form fields",
                "input_shape and n_classes go with .safetensors weights of an arch spec; a Hugging Face-style "
                "model's shapes come from its config.json",
            )
        hf_spec(form.spec, "0" * 64, ctx.filename)
    return fmt


def inspect_weights(path: Path, filename: str, form: WeightsForm, out_path: Path) -> dict[str, Any]:
    """Check an uploaded weights file (named ``filename``) and write the blob's bytes to ``out_path``; returns what
    the model spec row records. Raises :class:`IngestError` (422) naming the problem and the fix. Runs in the
    ingest subprocess."""
    fmt = precheck(filename, form)
    ctx = _ctx(filename, form)
    if fmt == SAFETENSORS:
        return _inspect_safetensors(ctx, Path(path), form, Path(out_path))
    return _inspect_hf_zip(ctx, Path(path), form, Path(out_path))


def _arch_spec(ctx: Ctx, form: WeightsForm) -> tuple[Any, tuple[int, ...]]:
    """The arch spec safetensors weights go with, and their input shape: both required."""
    from estimators.base import EstimatorError
    from estimators.models.spec import PretrainedSpec, parse_model_spec

    if form.spec is None:
        raise ctx.error(
            "No model spec",
            "safetensors weights need the spec of their network: send it as the form field spec, e.g. "
            '{"arch": "mlp", "hidden": [200, 200]} (taskgauge upload-model w.safetensors --spec spec.json)',
        )
    try:
        spec = parse_model_spec(form.spec)
    except EstimatorError as exc:
        raise _refuse(ctx, "Invalid model spec", exc) from None
    if isinstance(spec, PretrainedSpec):
        raise ctx.error(
            "Invalid model spec",
            'a {"arch": "pretrained"} model is uploaded as a .zip of its Hugging Face-style directory; '
            ".safetensors weights go with an arch spec (mlp, lenet, cnn, resnet)",
        )
    if form.input_shape is None:
        raise ctx.error(
            "No input shape",
            "give the per-sample shape of the data the network takes as the form field input_shape, e.g. 784 or "
            "1,28,28 (taskgauge upload-model … --input-shape 1,28,28)",
        )
    return spec, form.input_shape


def _inspect_safetensors(ctx: Ctx, path: Path, form: WeightsForm, out: Path) -> dict[str, Any]:
    from estimators.base import EstimatorError
    from estimators.models.pretrained import check_spec_weights, refuse_pickles, safetensors_shapes

    spec, input_shape = _arch_spec(ctx, form)
    work = Path(tempfile.mkdtemp(prefix="weights-", dir=out.parent))
    try:
        link = work / "model.safetensors"  # the checks read the file under the name its format has
        os.symlink(path, link)
        try:
            refuse_pickles(link)
        except EstimatorError as exc:
            raise _refuse(ctx, "Pickled weights refused", exc) from None
        try:
            shapes = safetensors_shapes(link)
        except EstimatorError as exc:
            raise _refuse(ctx, "Not a safetensors file", exc) from None
        n_params = _count_params(ctx, shapes, form.max_params)
        try:
            n_classes = check_spec_weights(spec, input_shape, form.n_classes, link)
        except EstimatorError as exc:
            raise _refuse(ctx, "Weights do not match the spec", exc) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shutil.copyfile(path, out)
    return {
        "format": SAFETENSORS,
        "spec": spec.model_dump(mode="json"),
        "meta": {
            "input_shape": list(input_shape),
            "n_classes": n_classes,
            "n_params": n_params,
            "n_tensors": len(shapes),
            "tensors": {k: list(v) for k, v in shapes.items()},
        },
    }


def hf_spec(raw: dict[str, Any] | None, sha256: str, filename: str = "upload.zip") -> dict[str, Any]:
    """The pretrained spec of an uploaded directory stored as blob ``sha256``: the user's options (train_blocks,
    max_length, pooling, init, train) plus the service's ``source: "local"`` and ``path: "blob:<sha256>"``.
    IngestError (422) for anything else.

    >>> hf_spec({"train_blocks": 1}, "ab" * 32)["path"][:9]
    'blob:abab'
    """
    from estimators.base import EstimatorError
    from estimators.models.spec import parse_model_spec

    ctx = _ctx(filename, WeightsForm())
    raw = dict(raw or {})
    if raw.get("arch", "pretrained") != "pretrained":
        raise ctx.error(
            "Invalid model spec",
            f"a .zip is a Hugging Face-style model directory, whose spec is arch 'pretrained', not "
            f"{str(raw.get('arch'))[:40]!r}; upload .safetensors weights for an arch spec",
        )
    given = [k for k in _SERVICE_KEYS if k in raw]
    if given:
        raise ctx.error(
            "Invalid model spec",
            f"{' and '.join(given)} of an uploaded model are set by the service; send only train_blocks, max_length, "
            "pooling, init and train",
        )
    try:
        spec = parse_model_spec({**raw, "arch": "pretrained", "source": "local", "path": BLOB_REF + sha256})
    except EstimatorError as exc:
        raise _refuse(ctx, "Invalid model spec", exc) from None
    return spec.model_dump(mode="json")


def _inspect_hf_zip(ctx: Ctx, path: Path, form: WeightsForm, out: Path) -> dict[str, Any]:
    from estimators.base import EstimatorError
    from estimators.models.pretrained import (
        check_hf_directory,
        load_hf_tokenizer,
        refuse_pickles,
        safetensors_shapes,
    )

    work = Path(tempfile.mkdtemp(prefix="model-", dir=out.parent))
    try:
        extract_model_zip(ctx, path, work)
        try:
            refuse_pickles(work)
        except EstimatorError as exc:
            raise _refuse(ctx, "Pickled weights refused", exc) from None
        try:
            cfg = check_hf_directory(work)
            shapes = safetensors_shapes(work / "model.safetensors")
            n_params = _count_params(ctx, shapes, form.max_params)
            load_hf_tokenizer(work)
        except EstimatorError as exc:
            raise _refuse(ctx, "Invalid model directory", exc) from None
        files = write_model_zip(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "format": HF_ZIP,
        "spec_options": dict(form.spec or {}),
        "meta": {
            "model_type": cfg.get("model_type"),
            "hidden_size": cfg.get("hidden_size"),
            "n_layers": cfg.get("num_hidden_layers"),
            "vocab_size": cfg.get("vocab_size"),
            "n_params": n_params,
            "n_tensors": len(shapes),
            "files": files,
        },
    }


# ------------------------------------------------------------------------------------------------ zips


def _ignored(path: PurePosixPath) -> bool:
    return path.parts[0] == "__MACOSX" or any(p.startswith(".") for p in path.parts)


def extract_model_zip(ctx: Ctx, path: Path, dest: Path) -> list[str]:
    """Extract a model zip into the empty folder ``dest`` with the checks every uploaded zip gets; a zip of one
    folder (``bert/config.json``) is extracted from inside it. Names with pickle suffixes are refused before a
    byte is written. Over a limit, corrupt or unsafe: IngestError 422. Returns the extracted relative paths."""
    from estimators.models.pretrained import PICKLE_SUFFIXES
    from taskgauge.datasets.ingest.arrays import ByteBudget
    from taskgauge.datasets.ingest.images import checked_zip_entries

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ctx.error("Corrupt file", f"not a valid zip archive ({exc}); zip the model directory again") from None
    try:
        with zf:
            infos = checked_zip_entries(ctx, zf, "zip the model directory")
            entries = [(PurePosixPath(i.filename.replace("\\", "/")), i) for i in infos]
            entries = [(p, i) for p, i in entries if not _ignored(p)]
            if not entries:
                raise ctx.error(
                    "Empty zip", "the zip holds no files; zip config.json, model.safetensors and the tokenizer"
                )
            tops = {p.parts[0] for p, _ in entries}
            if len(tops) == 1 and all(len(p.parts) > 1 for p, _ in entries):
                entries = [(PurePosixPath(*p.parts[1:]), i) for p, i in entries]
            pickled = sorted(str(p) for p, _ in entries if p.suffix.lower() in PICKLE_SUFFIXES)
            if pickled:
                raise ctx.error(
                    "Pickled weights refused",
                    f"the zip holds pickle files ({', '.join(pickled[:5])}), which can run code when loaded; "
                    "save with save_pretrained(dir, safe_serialization=True), delete the pickles and zip again",
                )
            budget = ByteBudget(ctx)
            out: list[str] = []
            for rel, info in entries:
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                budget.take(info.file_size, "the zip")  # declared size, then held to it while decompressing
                try:
                    with zf.open(info) as src, open(target, "xb") as dst:
                        left = info.file_size
                        while True:
                            chunk = src.read(_CHUNK)
                            if not chunk:
                                break
                            left -= len(chunk)
                            if left < 0:
                                raise EOFError("the entry is longer than its header says")
                            dst.write(chunk)
                except FileExistsError:
                    raise ctx.error(
                        "Unsafe zip entry", f"entry '{info.filename}' appears twice; zip the model directory again"
                    ) from None
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
                    raise ctx.error(
                        "Corrupt zip entry",
                        f"entry '{info.filename}' cannot be decompressed ({exc}); zip the model directory again",
                    ) from None
                out.append(str(rel))
            return sorted(out)
    except IngestError as exc:
        if exc.status == 413:  # a model zip over the limits is refused as bad input (issue 16), not as a large upload
            raise IngestError("Model zip over the limits", exc.detail, 422) from None
        raise


def write_model_zip(directory: Path, out: Path) -> list[str]:
    """Write every file under ``directory`` into the zip ``out``: sorted names, fixed timestamps and modes, stored
    (the weights do not compress), so the same files always give the same bytes. Returns the names."""
    from taskgauge.blobs import FIXED_ZIP_TIME

    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o600 << 16
            with open(directory / name, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    return names


# ------------------------------------------------------------------------------------------- the worker's side

_LOCAL: dict[tuple[str, str], Path] = {}
_LOCAL_LOCK = threading.Lock()


def local_weights(blobs: BlobStore, root: Path, sha256: str, fmt: str, *, max_expanded_mb: int = 2048) -> Path:
    """The stored weights as a local path: ``root/<sha256>/model.safetensors`` (``safetensors``) or the extracted
    directory ``root/<sha256>`` (``hf-zip``). Made once per host (a temp folder renamed into place, so a reader
    never sees half of it) and remembered per process."""
    from taskgauge.blobs import check_sha256

    check_sha256(sha256)
    if fmt not in FORMATS:
        raise ValueError(f"unknown weights format {fmt!r}")
    key = (str(root), sha256)
    with _LOCAL_LOCK:
        known = _LOCAL.get(key)
        if known is not None and known.exists():
            return known
        final = root / sha256
        if not final.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=root))
            try:
                if fmt == SAFETENSORS:
                    shutil.copyfile(blobs.path(sha256), work / "model.safetensors")
                else:
                    form = WeightsForm(max_expanded_mb=max_expanded_mb)
                    extract_model_zip(_ctx(f"{sha256[:12]}.zip", form), blobs.path(sha256), work)
                try:
                    os.rename(work, final)
                except OSError:
                    if not final.is_dir():  # not another process's copy: a real failure
                        raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
        path = final / "model.safetensors" if fmt == SAFETENSORS else final
        _LOCAL[key] = path
        return path
