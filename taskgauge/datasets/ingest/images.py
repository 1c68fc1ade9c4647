"""``.zip`` of image folders (ImageFolder layout, README.md): ``class_name/*.png`` → X (N, C, H, W) in [0, 1].

Nothing is extracted to disk. Guards, all before or while reading: entry names with path traversal (``..``
components, absolute or drive paths) reject the archive; the number of entries and the sum of the declared
uncompressed sizes are checked from the central directory; every entry is then decompressed through a byte
budget, so an entry that expands past what the headers declared cannot exceed the limit either; each image's
pixel count is checked from its header before it is decoded (decompression bombs inside PNGs).
"""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.datasets.ingest import IMAGE_EXTENSIONS
from taskgauge.datasets.ingest.arrays import ByteBudget
from taskgauge.datasets.ingest.common import check_features, make_dataset
from taskgauge.datasets.ingest.errors import Ctx, IngestError

_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
_GRAY_MODES = {"L", "LA"}
_CHUNK = 1024 * 1024


def _unsafe_name(name: str) -> bool:
    """True for entry names that would escape an extraction directory: absolute, drive-letter or UNC paths and
    any ``..`` component (either slash)."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) >= 2 and norm[1] == ":"):
        return True
    return any(part == ".." for part in norm.split("/"))


def checked_zip_entries(ctx: Ctx, zf: zipfile.ZipFile, how: str) -> list[zipfile.ZipInfo]:
    """The file entries of an archive after the checks every uploaded zip gets, from its central directory alone
    (nothing decompressed): no entry that would escape an extraction directory (absolute, drive or ``..`` paths),
    no symbolic links, at most ``max_files`` files (413) and at most ``max_expanded_mb`` declared uncompressed
    bytes (413; :func:`read_limited` holds every entry to its budget again while decompressing). ``how`` completes
    the fix in the messages ("zip the class folders")."""
    infos = zf.infolist()
    for info in infos:
        if _unsafe_name(info.filename):
            raise ctx.error(
                "Unsafe zip entry",
                f"entry '{info.filename}' points outside the archive (absolute path or '..'); {how} from inside "
                "their parent folder, e.g. `cd data && zip -r ../data.zip .`",
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ctx.error(
                "Unsafe zip entry",
                f"entry '{info.filename}' is a symbolic link; zip the files themselves (zip without -y)",
            )
    files = [i for i in infos if not i.is_dir()]
    opts = ctx.options
    if len(files) > opts.max_files:
        raise ctx.error(
            "Too many files",
            f"the zip has {len(files):,} files, more than the limit of {opts.max_files:,}; upload a subset",
            status=413,
        )
    declared = sum(i.file_size for i in files)
    if declared > opts.max_expanded_bytes:
        raise ctx.too_large("the zip", declared)
    return files


def read_limited(fh: Any, budget: ByteBudget, what: str, size: int | None = None) -> bytearray:
    """Read a decompressing stream to its end, charging every byte to ``budget`` as it arrives (the zip-bomb
    check that does not trust the headers). With the declared ``size`` the buffer is allocated once and filled in
    place; without it, it grows — never a list of chunks plus a joined copy."""
    if size is not None:
        budget.take(size, what)
        buf = bytearray(size)
        view = memoryview(buf)
        pos = 0
        while pos < size:
            got = fh.readinto(view[pos : pos + min(_CHUNK, size - pos)])
            if not got:
                raise EOFError(f"{pos} of {size} declared bytes present")
            pos += got
        view.release()
        if fh.read(1):  # more than declared (zipfile itself stops at the declared size; other streams may not)
            raise EOFError("the entry is longer than its header says")
        return buf
    buf = bytearray()
    while True:
        chunk = fh.read(_CHUNK)
        if not chunk:
            return buf
        budget.take(len(chunk), what)
        buf += chunk


class _BufferReader(io.RawIOBase):
    """A read-only, seekable file over a buffer without copying it (``io.BytesIO(bytearray)`` would)."""

    def __init__(self, buf: bytearray) -> None:
        self._mv = memoryview(buf)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), len(self._mv) - self._pos))
        b[:n] = self._mv[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._mv)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._mv.release()
        super().close()


def _is_ignored(path: PurePosixPath) -> bool:
    return (
        path.parts[0] == "__MACOSX" or any(p.startswith(".") for p in path.parts) or path.name.lower() in _IGNORED_NAMES
    )


def _layout(ctx: Ctx, infos: list[zipfile.ZipInfo]) -> tuple[list[tuple[str, zipfile.ZipInfo]], int, str]:
    """(class, entry) pairs sorted like torchvision's ImageFolder, the number of ignored entries, and the
    common top folder that was stripped ("" if none)."""
    images: list[tuple[PurePosixPath, zipfile.ZipInfo]] = []
    ignored = 0
    for info in infos:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if _is_ignored(path) or path.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored += 1
            continue
        images.append((path, info))
    if not images:
        raise ctx.error(
            "No images",
            f"the zip holds no images ({', '.join(IMAGE_EXTENSIONS)}); lay it out as class_name/image.png, "
            "one folder per class",
        )
    prefix: tuple[str, ...] = ()
    # A zip of one folder (``data/cat/1.png``): strip the shared top folders.
    while all(len(p.parts) > len(prefix) + 2 for p, _ in images) and (
        len({p.parts[len(prefix)] for p, _ in images}) == 1
    ):
        prefix = prefix + (images[0][0].parts[len(prefix)],)
    out = []
    for path, info in images:
        rel = path.parts[len(prefix) :]
        if len(rel) < 2:
            raise ctx.error(
                "Not an image-folder layout",
                f"entry '{info.filename}' is not inside a class folder; lay the zip out as class_name/image.png "
                "(one folder per class, the folder name is the label)",
            )
        out.append((rel[0], info))
    out.sort(key=lambda t: (t[0], t[1].filename))
    return out, ignored, "/".join(prefix)


def _max_entry_bytes(opts: Any) -> int:
    """The largest uncompressed entry an image within ``max_image_pixels`` can need (uncompressed 16-bit RGBA,
    with headers), so a 2 GB 'a.png' is refused from the zip's directory before a byte is decompressed."""
    return opts.max_image_pixels * 8 + 1024 * 1024


def _decode(ctx: Ctx, data: bytearray, name: str) -> Image.Image:
    opts = ctx.options
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BufferedReader(_BufferReader(data)))
            w, h = im.size
            if w * h > opts.max_image_pixels:
                raise ctx.error(
                    "Image too large",
                    f"entry '{name}' is {w}×{h} = {w * h:,} pixels, more than the limit of "
                    f"{opts.max_image_pixels:,}; shrink the images before zipping",
                    status=413,
                )
            im.seek(0)  # animated images: the first frame
            im.load()
            im = _normalise_mode(im)
    except IngestError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ctx.error(
            "Undecodable image",
            f"entry '{name}' is not a readable image ({type(exc).__name__}: {exc}); remove or re-save it",
        ) from None
    return im


def _normalise_mode(im: Image.Image) -> Image.Image:
    """One of L, LA, RGB, RGBA, I (16-bit values) or F, so that resizing and scaling are defined."""
    m = im.mode
    if m in ("L", "LA", "RGB", "RGBA", "I", "F"):
        return im
    if m.startswith("I;16"):
        return im.convert("I")
    if m == "1":
        return im.convert("L")
    if m == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    return im.convert("RGBA" if "A" in m else "RGB")  # CMYK, YCbCr, LAB, HSV, PA, …


def _to_array(ctx: Ctx, im: Image.Image, name: str) -> tuple[np.ndarray, bool]:
    """The image's values, compact: (H, W) or (H, W, 3), uint8 (to be divided by 255) or uint16 (16-bit grey, by
    65535), and whether an alpha channel was dropped. The float32 form is made once, in the canonical X."""
    mode = im.mode
    if mode == "F":
        raise ctx.error(
            "Unsupported image mode",
            f"entry '{name}' is a 32-bit float image; save it as an 8- or 16-bit PNG",
        )
    if mode == "I":  # 16-bit grey (Pillow's 32-bit integer mode holds it)
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16), False
    if ctx.options.grayscale or mode in _GRAY_MODES:
        g = im.convert("L") if mode != "L" else im
        return np.asarray(g, dtype=np.uint8), mode in ("LA", "RGBA")
    dropped = mode == "RGBA"
    return np.asarray(im.convert("RGB"), dtype=np.uint8), dropped


def _scaled(a: np.ndarray) -> np.ndarray:
    """Compact image values to float32 in [0, 1], exactly as before: / 255 in float32, / 65535 in float64."""
    if a.dtype == np.uint16:
        return (a / 65535.0).astype(np.float32)
    return a.astype(np.float32) / np.float32(255.0)


def read_image_zip(ctx: Ctx, path: Path) -> CanonicalDataset:
    opts = ctx.options
    if opts.label_column is not None:
        raise ctx.error(
            "No label column in a zip",
            "images take their label from their class folder, so label_column does not apply; leave it empty",
        )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ctx.error("Corrupt file", f"not a valid zip archive ({exc}); zip the class folders again") from None
    with zf:
        files = checked_zip_entries(ctx, zf, "zip the class folders")
        entries, ignored, top = _layout(ctx, files)
        class_names = sorted({c for c, _ in entries})
        class_index = {c: i for i, c in enumerate(class_names)}

        budget = ByteBudget(ctx)
        arrays: list[np.ndarray] = []
        first_size: tuple[str, tuple[int, int]] | None = None
        dropped_alpha = 0
        any_color = False
        max_entry = _max_entry_bytes(opts)
        for _cls, info in entries:
            if info.file_size > max_entry:
                raise ctx.error(
                    "Image file too large",
                    f"entry '{info.filename}' is {info.file_size / 2**20:,.1f} MB uncompressed, more than any image "
                    f"within the pixel limit can take ({max_entry / 2**20:,.1f} MB); shrink or re-save it",
                    status=413,
                )
            try:
                with zf.open(info) as fh:
                    data = read_limited(fh, budget, "the zip", size=info.file_size)
            except IngestError:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
                raise ctx.error(
                    "Corrupt zip entry",
                    f"entry '{info.filename}' cannot be decompressed ({exc}); zip the folders again",
                ) from None
            im = _decode(ctx, data, info.filename)
            del data
            if opts.resize is not None:
                h, w = opts.resize
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
            elif first_size is None:
                first_size = (info.filename, im.size)
            elif im.size != first_size[1]:
                (w0, h0), (w1, h1) = first_size[1], im.size
                raise ctx.error(
                    "Images of different sizes",
                    f"entry '{first_size[0]}' is {w0}×{h0} but '{info.filename}' is {w1}×{h1} (width×height); "
                    f"pass resize (e.g. resize={h0}x{w0}, as height×width) to bring them to one size",
                )
            a, dropped = _to_array(ctx, im, info.filename)
            im.close()
            dropped_alpha += int(dropped)
            any_color |= a.ndim == 3
            # The decoded images count against the same limit as the decompressed bytes.
            budget.take(a.nbytes, "the decoded images")
            arrays.append(a)

    # One float32 array (N, C, H, W), filled image by image: the decoded pixels are held once more at most.
    h, w = arrays[0].shape[:2]
    channels = 3 if any_color else 1
    budget.take(len(arrays) * channels * h * w * 4, "the decoded images")
    X = np.empty((len(arrays), channels, h, w), dtype=np.float32)
    for i, a in enumerate(arrays):
        f = _scaled(a)
        X[i] = f.transpose(2, 0, 1) if f.ndim == 3 else f[None, :, :]
        arrays[i] = None  # type: ignore[call-overload]
    del arrays
    X = check_features(ctx, X, what="the images")
    y = np.array([class_index[c] for c, _ in entries], dtype=np.int64)
    pre: dict[str, Any] = {
        "scale": "pixel / 255 (8-bit) or / 65535 (16-bit) to [0, 1]",
        "channels": "rgb" if any_color else "grayscale",
        "grayscale": opts.grayscale,
        "resize": list(opts.resize) if opts.resize is not None else None,
    }
    if opts.resize is not None:
        pre["resample"] = "bilinear (antialiased)"
    if dropped_alpha:
        pre["dropped_alpha_channel"] = dropped_alpha
    extra: dict[str, Any] = {"ignored_entries": ignored}
    if top:
        extra["top_folder"] = top
    return make_dataset(ctx, X, y, class_names, source_format="image-zip", preprocessing=pre, **extra)
