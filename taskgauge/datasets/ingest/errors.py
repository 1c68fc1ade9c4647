"""The ingest error and options (README.md): what the upload endpoint and the CLI pass in and catch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class IngestError(ValueError):
    """A file that cannot become a canonical dataset.

    ``title`` is short ("Non-numeric columns"), ``detail`` names the file, what was wrong and how to fix it,
    ``status`` is the HTTP status the upload endpoint answers with: 422, or 413 when the data is too large.

    >>> err = IngestError("Empty data", "'a.csv': the file has no rows; upload a file with at least 3 samples")
    >>> str(err)
    "Empty data: 'a.csv': the file has no rows; upload a file with at least 3 samples"
    """

    def __init__(self, title: str, detail: str, status: int = 422) -> None:
        super().__init__(f"{title}: {detail}")
        self.title = title
        self.detail = detail
        self.status = status


_SIZE_RE = re.compile(r"^\s*(\d+)\s*[x×,]\s*(\d+)\s*$", re.IGNORECASE)


class IngestOptions(BaseModel):
    """How to read an upload.

    * ``label_column``: the table column (``.csv``/``.parquet``) or ``.npz`` array holding the class labels;
      default: a column named ``label``, ``y`` or ``target`` (any case), or the array ``y``.
    * ``resize``: ``(height, width)`` every image of a ``.zip`` is resized to (bilinear, antialiased); also
      accepted as the string ``"32x32"``. Needed when the images do not all have the same size.
    * ``grayscale``: convert images to one channel (ITU-R 601-2 luma, Pillow's ``"L"`` mode).
    * ``max_files``: most entries a ``.zip`` may hold (413 above).
    * ``max_expanded_mb``: most megabytes the data may expand to, counted as what will really be materialised:
      the sum of a zip's uncompressed sizes (checked from the headers and again while decompressing) plus the
      decoded float32 images, an array's elements × its itemsize plus the canonical float copy, a table's values
      (leaf values of every column, not rows × columns) × 8 bytes (413 above).
    * ``max_image_pixels``: most pixels one image may have before resizing (decompression-bomb guard).
    * ``max_classes``: most distinct classes (or names in a ``.npz``'s ``classes`` array) (413 above).
    * ``max_columns``: most columns a ``.csv``/``.parquet`` table may have (413 above; checked from the header).
    * ``text_column``: a ``.csv``/``.parquet`` column of texts: the table is then a text dataset (its texts and
      labels; other columns are ignored), embedded on a worker. ``.jsonl`` files are text datasets always.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    label_column: str | None = Field(default=None, max_length=1000)
    text_column: str | None = Field(default=None, max_length=1000)
    resize: tuple[int, int] | None = None
    grayscale: bool = False
    max_files: int = Field(default=100_000, ge=1)
    max_expanded_mb: int = Field(default=2048, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_classes: int = Field(default=10_000, ge=1)
    max_columns: int = Field(default=100_000, ge=1)

    @field_validator("label_column", "text_column", mode="before")
    @classmethod
    def _blank_label_is_none(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @field_validator("resize", mode="before")
    @classmethod
    def _parse_resize(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip():
                return None
            m = _SIZE_RE.match(v)
            if not m:
                raise ValueError(f"resize must look like HEIGHTxWIDTH, e.g. 32x32; got {v!r}")
            return (int(m.group(1)), int(m.group(2)))
        return v

    @field_validator("resize")
    @classmethod
    def _check_resize(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not all(1 <= s <= 4096 for s in v):
            raise ValueError(f"resize sides must be between 1 and 4096 pixels; got {v[0]}x{v[1]}")
        return v

    @property
    def max_expanded_bytes(self) -> int:
        return self.max_expanded_mb * 1024 * 1024


@dataclass(frozen=True)
class Ctx:
    """The file being read and the options: makes errors that name the file."""

    filename: str
    options: IngestOptions

    def error(self, title: str, detail: str, status: int = 422) -> IngestError:
        return IngestError(title, f"'{self.filename}': {detail}", status)

    def too_large(self, what: str, nbytes: int) -> IngestError:
        mb = nbytes / (1024 * 1024)
        return self.error(
            "Data too large",
            f"{what} expands to {mb:,.1f} MB, more than the limit of {self.options.max_expanded_mb} MB; "
            "upload a smaller subset (or, for images, pass a smaller resize)",
            status=413,
        )
