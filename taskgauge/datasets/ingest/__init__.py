"""Turn an uploaded file into the canonical dataset (docs/deployment.md, README.md).

One entry point, :func:`ingest_file`, used by the upload endpoint and the CLI's local mode::

    from taskgauge.datasets.ingest import IngestError, IngestOptions, ingest_file
    ds = ingest_file(Path("/tmp/upload-123"), "digits.npz")            # CanonicalDataset
    ds = ingest_file(p, "iris.csv", IngestOptions(label_column="species"))
    ds = ingest_file(p, "pets.zip", IngestOptions(resize=(32, 32), grayscale=True))

The file's format comes from ``filename``'s extension (``path`` may be an extension-less temp file). Bad input
raises :class:`IngestError` with ``title``, ``detail`` (naming the file, what was wrong and the fix) and
``status`` (422, or 413 for data over the limits). Nothing is ever unpickled.

Canonical result: ``X`` float32 (N, D) for tables and arrays (values as given) or (N, C, H, W) in [0, 1] for
images; ``y`` int64 class indices 0..C-1 with ``classes`` names (sorted distinct label values, or folder names);
``meta`` = ``{"source_format", "filename", "preprocessing": {...}, "label_column", ...}``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path, PurePath

from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.datasets.ingest.errors import Ctx, IngestError, IngestOptions

__all__ = ["IngestError", "IngestOptions", "SUPPORTED_EXTENSIONS", "IMAGE_EXTENSIONS", "ingest_file"]

#: extension -> (module, reader); a reader's module (and pandas, pyarrow or Pillow) is imported on first use, so the
#: ingest subprocess of a .npz never pays for pandas.
_READERS: dict[str, tuple[str, str]] = {
    ".npz": ("arrays", "read_npz_file"),
    ".npy": ("arrays", "read_npy_file"),
    ".csv": ("tables", "read_csv_file"),
    ".parquet": ("tables", "read_parquet_file"),
    ".zip": ("images", "read_image_zip"),
    ".jsonl": ("texts", "read_jsonl_file"),
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_READERS)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def reader_for(ext: str) -> Callable[[Ctx, Path], CanonicalDataset] | None:
    """The reader function of a file extension (importing its module), or None when unsupported."""
    spec = _READERS.get(ext)
    if spec is None:
        return None
    return getattr(importlib.import_module(f"{__name__}.{spec[0]}"), spec[1])


def ingest_file(path: Path, filename: str, options: IngestOptions | None = None) -> CanonicalDataset:
    """Read ``path`` (named ``filename`` by the user) into a :class:`CanonicalDataset`; see the module doc."""
    options = options or IngestOptions()
    name = PurePath(filename.replace("\\", "/")).name or "upload"
    ctx = Ctx(filename=name, options=options)
    ext = PurePath(name).suffix.lower()
    reader = reader_for(ext)
    if reader is None:
        raise ctx.error(
            "Unsupported file type",
            f"'{ext or '(no extension)'}' is not a supported format; upload one of "
            f"{', '.join(SUPPORTED_EXTENSIONS)} (a .zip holds image folders: class_name/image.png)",
        )
    if options.text_column is not None and ext not in (".csv", ".parquet"):
        raise ctx.error(
            "Text column on a non-table file",
            f"text_column names a column of a .csv or .parquet table; a {ext} file has no columns "
            '(a .jsonl file\'s texts are its "text" fields)',
        )
    if ext != ".zip" and (options.resize is not None or options.grayscale):
        raise ctx.error(
            "Image options on a non-image file",
            f"resize and grayscale apply to a .zip of image folders only; leave them unset for {ext} files",
        )
    try:
        return reader(ctx, Path(path))
    except MemoryError:
        raise ctx.error(
            "Data too large",
            "the data does not fit in the memory available to read it; upload a smaller subset",
            status=413,
        ) from None
