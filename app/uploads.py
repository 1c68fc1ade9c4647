"""Streaming multipart upload: the ``file`` part goes straight to a temp file, hashed (SHA-256) and counted as it
arrives; past ``max_bytes`` nothing more is written and the request ends in 413. (FastAPI's ``UploadFile``
would spool the whole body before the route runs, so the limit could not be enforced while streaming.)

Other form fields (``name``, ``label_column``, ``text_column``, ``resize``, ``grayscale``) are small text parts. Everything the
parser keeps is capped: at most :data:`MAX_PARTS` parts, :data:`HEADER_LIMIT` bytes of headers per part and
:data:`FIELD_LIMIT` bytes per text field, so the memory an upload takes does not depend on what the client sends.
A violation, or a body the multipart parser cannot parse, is a 400 problem (the rest of the body is drained up to
:data:`DRAIN_LIMIT` so that the client reads the answer).

Every other request body (JSON) is capped by ``app.security`` (``TASKGAUGE_MAX_JSON_BODY_KB``).

The temp file of an upload is locked (:class:`taskgauge.blobs.TempLock`) while its request lives;
:func:`sweep_uploads` (at API startup) removes those whose process died.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException

from taskgauge.blobs import TempLock, sweep_stale
from taskgauge.errors import BadRequest, PayloadTooLarge, clip

FIELD_LIMIT = 64 * 1024
MAX_PARTS = 16  # file, name, label_column, text_column, resize, grayscale — and room for a client's extras
HEADER_LIMIT = 8 * 1024  # header bytes of one part
DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) at most this much past the limit so clients see the 413
UPLOAD_PREFIX = "upload-"


def sweep_uploads(tmp_dir: Path) -> int:
    """Remove the upload temp files whose request's process died (run at API startup)."""
    return sweep_stale(tmp_dir, UPLOAD_PREFIX + "*")


@dataclass
class ReceivedUpload:
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    lock: TempLock | None = None

    def cleanup(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        if self.lock is not None:
            self.lock.release()


async def receive_upload(
    request: Request, *, max_bytes: int, tmp_dir: Path, file_field: str = "file"
) -> ReceivedUpload:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest(
            "send the dataset as multipart/form-data with a 'file' part, e.g. "
            "curl -F file=@data.npz -F name=digits -H 'Authorization: Bearer …' …/api/v1/datasets",
            title="Expected a multipart upload",
        )
    tmp_dir.mkdir(parents=True, exist_ok=True)
    out = ReceivedUpload()
    state: dict = {
        "headers": {},
        "hname": b"",
        "hval": b"",
        "hbytes": 0,
        "name": None,
        "is_file": False,
        "buf": bytearray(),
        "parts": 0,
    }
    hasher = hashlib.sha256()
    fh = None
    over = False
    failure: BadRequest | None = None  # the first violation; the rest of the body is drained, then it is raised

    def fail(err: BadRequest) -> None:
        nonlocal failure
        if failure is None:
            failure = err
        state["is_file"] = False
        state["buf"] = bytearray()

    def on_part_begin() -> None:
        state.update(headers={}, hname=b"", hval=b"", hbytes=0, name=None, is_file=False, buf=bytearray())
        state["parts"] += 1
        if state["parts"] > MAX_PARTS:
            fail(
                BadRequest(
                    f"the form has more than {MAX_PARTS} parts; send the 'file' part and the few option "
                    "fields (name, label_column, text_column, resize, grayscale) only",
                    title="Too many form parts",
                )
            )

    def header_bytes(n: int) -> bool:
        state["hbytes"] += n
        if state["hbytes"] > HEADER_LIMIT:
            fail(
                BadRequest(
                    f"a form part has more than {HEADER_LIMIT} bytes of headers; send plain form parts",
                    title="Form part headers too large",
                )
            )
        return failure is None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        if header_bytes(end - start):
            state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        if header_bytes(end - start):
            state["hval"] += data[start:end]

    def on_header_end() -> None:
        if failure is None:
            state["headers"][state["hname"].decode("latin-1").lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        nonlocal fh
        if failure is not None:
            return
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" in disp and name == file_field:
            if out.path is not None:
                fail(BadRequest("send exactly one 'file' part", title="More than one file"))
                return
            fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=UPLOAD_PREFIX)
            fh = os.fdopen(fd, "wb")
            out.path = Path(tmp)
            out.lock = TempLock(out.path)
            out.filename = disp[b"filename"].decode("utf-8", "replace")
            state["is_file"] = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal over
        if failure is not None:
            return
        chunk = data[start:end]
        if state["is_file"]:
            out.size += len(chunk)
            if out.size > max_bytes:
                over = True
                return
            hasher.update(chunk)
            fh.write(chunk)
        else:
            state["buf"] += chunk
            if len(state["buf"]) > FIELD_LIMIT:
                fail(
                    BadRequest(
                        f"form field '{clip(state['name'])}' is over {FIELD_LIMIT} bytes; send short text fields",
                        title="Form field too large",
                    )
                )

    def on_part_end() -> None:
        if failure is None and not state["is_file"] and state["name"]:
            out.fields[state["name"]] = state["buf"].decode("utf-8", "replace")
        state["buf"] = bytearray()

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
            "on_end": lambda: state.update(ended=True),
        },
    )
    try:
        received = 0
        stop_at: int | None = None  # once over a limit: drain this far, then answer
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if (over or failure is not None) and stop_at is None:
                    stop_at = received + DRAIN_LIMIT
                if stop_at is not None:
                    if received > stop_at:
                        break
                    continue
                parser.write(chunk)
            else:
                if stop_at is None:
                    parser.finalize()
        except ParseError as exc:
            fail(
                BadRequest(
                    f"the multipart body cannot be parsed ({exc}); send a well-formed multipart/form-data "
                    "request (curl -F file=@data.npz …)",
                    title="Malformed multipart body",
                    kind="bad-upload",
                )
            )
        finally:
            if fh is not None:
                fh.close()
        if failure is None and not over and not state.get("ended"):
            fail(
                BadRequest(
                    "the multipart body ended before its closing boundary (a truncated upload); send the "
                    "whole request again",
                    title="Malformed multipart body",
                    kind="bad-upload",
                )
            )
        if failure is not None:
            raise failure
        if over:
            raise PayloadTooLarge(
                f"'{clip(out.filename or 'upload', 200)}' is larger than the limit of "
                f"{max_bytes // (1024 * 1024)} MB "
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


@asynccontextmanager
async def ingest_slot(request: Request, limit: int, wait_s: float) -> AsyncIterator[None]:
    """One of ``limit`` ingest slots of this API process (``TASKGAUGE_MAX_CONCURRENT_INGESTS``), shared by dataset
    and weights uploads: an upload waits up to ``wait_s`` for one, then gets 503 with ``Retry-After``."""
    sem = getattr(request.app.state, "ingest_slots", None)
    if sem is None:
        sem = request.app.state.ingest_slots = asyncio.Semaphore(limit)
    try:
        await asyncio.wait_for(sem.acquire(), timeout=max(wait_s, 0.01))
    except TimeoutError:
        raise HTTPException(
            503,
            f"{limit} upload{'s are' if limit != 1 else ' is'} being read already (TASKGAUGE_MAX_CONCURRENT_INGESTS); "
            "send this one again in a few seconds",
            headers={"Retry-After": "10"},
        ) from None
    try:
        yield
    finally:
        sem.release()


def printable(text: str) -> str:
    """Control characters (NUL above all: PostgreSQL cannot store it) replaced by U+FFFD in names stored on rows."""
    return "".join(c if c >= " " and c != "\x7f" else "\ufffd" for c in text)


def bool_field(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def check_storage_now(state: Any, owner_id: str, incoming: int) -> None:
    """The owner's storage quota with the incoming upload, before it is parsed (checked again when stored)."""
    from taskgauge.services.quotas import check_storage

    with state.sessions() as s:
        check_storage(s, owner_id, state.settings, incoming)
