"""Streaming multipart upload: the ``file`` part goes straight to a temp file, hashed (SHA-256) and counted as it
arrives; past ``max_bytes`` nothing more is written and the request ends in 413. (FastAPI's ``UploadFile``
would spool the whole body before the route runs, so the limit could not be enforced while streaming.)

Other form fields (``name``, ``label_column``, ``resize``, ``grayscale``) are small text parts (64 KiB cap).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from taskgauge.errors import BadRequest, PayloadTooLarge

FIELD_LIMIT = 64 * 1024
DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) at most this much past the limit so clients see the 413


@dataclass
class ReceivedUpload:
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def cleanup(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


async def receive_upload(request: Request, *, max_bytes: int, tmp_dir: Path, file_field: str = "file") -> ReceivedUpload:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest(
            "send the dataset as multipart/form-data with a 'file' part, e.g. "
            "curl -F file=@data.npz -F name=digits -H 'Authorization: Bearer …' …/api/v1/datasets",
            title="Expected a multipart upload",
        )
    tmp_dir.mkdir(parents=True, exist_ok=True)
    out = ReceivedUpload()
    state: dict = {"headers": {}, "hname": b"", "hval": b"", "name": None, "is_file": False, "buf": bytearray()}
    hasher = hashlib.sha256()
    fh = None
    over = False

    def on_part_begin() -> None:
        state.update(headers={}, hname=b"", hval=b"", name=None, is_file=False, buf=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].decode("latin-1").lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        nonlocal fh
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" in disp and name == file_field:
            if out.path is not None:
                raise BadRequest("send exactly one 'file' part", title="More than one file")
            fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
            fh = os.fdopen(fd, "wb")
            out.path = Path(tmp)
            out.filename = disp[b"filename"].decode("utf-8", "replace")
            state["is_file"] = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal over
        chunk = data[start:end]
        if state["is_file"]:
            out.size += len(chunk)
            if out.size > max_bytes:
                over = True
                if out.size > max_bytes + DRAIN_LIMIT:
                    raise _TooLarge()
                return
            hasher.update(chunk)
            fh.write(chunk)
        else:
            state["buf"] += chunk
            if len(state["buf"]) > FIELD_LIMIT:
                raise BadRequest(f"form field '{state['name']}' is over {FIELD_LIMIT} bytes; send short text fields")

    def on_part_end() -> None:
        if not state["is_file"] and state["name"]:
            out.fields[state["name"]] = state["buf"].decode("utf-8", "replace")

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except _TooLarge:
            over = True
        finally:
            if fh is not None:
                fh.close()
        if over:
            raise PayloadTooLarge(
                f"'{out.filename}' is larger than the limit of {max_bytes // (1024 * 1024)} MB "
                "(TASKGAUGE_MAX_UPLOAD_MB); upload a subset, or raise the limit on the server"
            )
        if out.path is None:
            raise BadRequest(
                "the form has no 'file' part; send the dataset as the 'file' field (curl -F file=@data.npz …)",
                title="No file in the upload",
            )
        out.sha256 = hasher.hexdigest()
        return out
    except BaseException:
        out.cleanup()
        raise


class _TooLarge(Exception):
    pass
