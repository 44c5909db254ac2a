"""Streaming ``multipart/form-data`` for uploads: files and fields kept in memory, limits
enforced while the body arrives (Starlette's form parser would spool large parts to disk
and read every byte before anything can be refused)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request, status
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["FormLimits", "UploadedForm", "read_form", "size_text"]


@dataclass(frozen=True)
class FormLimits:
    """What an endpoint accepts; the texts are its own words for the user."""

    file_bytes: int
    """Largest file part; reading stops (413) as soon as one passes it."""
    body_bytes: int
    """Largest declared Content-Length (413 before reading anything)."""
    fields_bytes: int
    """All non-file parts together."""
    max_files: int = 1
    too_many_files: str = "send one file per upload"
    file_needs_name: str | None = None
    """None: a file part without a filename is called "the upload"; else the 400 text."""
    not_multipart: str = "send multipart/form-data with the file in the field 'file'"
    fields_too_large: str = "the form fields are too large"


@dataclass
class UploadedForm:
    """The ``file`` parts as ``(file name, bytes)`` in order, and the text fields."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


class FileTooLarge(Exception):
    """A file part passed ``FormLimits.file_bytes``; the message is its file name."""


class _BadForm(Exception):
    pass


class _Parts:
    """python-multipart callbacks collecting an :class:`UploadedForm` within limits."""

    def __init__(self, limits: FormLimits) -> None:
        self.limits = limits
        self.form = UploadedForm()
        self._headers: dict[bytes, bytes] = {}
        self._header, self._value = b"", b""
        self._name: str | None = None
        self._file_name: str | None = None
        self._buffer = bytearray()
        self._field_bytes = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._name, self._file_name, self._buffer = {}, None, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header.lower()] = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name != "file":
            if name in self.form.fields:
                raise _BadForm(f"the form field {name!r} is sent twice")
            self._name = name
            return
        if len(self.form.files) >= self.limits.max_files:
            raise _BadForm(self.limits.too_many_files)
        given = params.get(b"filename", b"").decode("utf-8", "replace").strip()
        if not given and self.limits.file_needs_name is not None:
            raise _BadForm(self.limits.file_needs_name)
        self._file_name = given.replace("\\", "/").rsplit("/", 1)[-1] or "the upload"

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._file_name is not None:
            if len(self._buffer) + (end - start) > self.limits.file_bytes:
                raise FileTooLarge(self._file_name)
        else:
            self._field_bytes += end - start
            if self._field_bytes > self.limits.fields_bytes:
                raise _BadForm(self.limits.fields_too_large)
        self._buffer += data[start:end]

    def _end(self) -> None:
        if self._file_name is not None:
            self.form.files.append((self._file_name, bytes(self._buffer)))
        elif self._name is not None:
            try:
                self.form.fields[self._name] = self._buffer.decode("utf-8")
            except UnicodeDecodeError:
                raise _BadForm(f"the form field {self._name!r} is not UTF-8 text") from None
        self._begin()


def size_text(n_bytes: int) -> str:
    """``1.5 MB`` or ``32,768 bytes``."""
    return f"{n_bytes / 2**20:.1f} MB" if n_bytes >= 2**20 else f"{n_bytes:,} bytes"


async def read_form(request: Request, limits: FormLimits) -> UploadedForm:
    """The files and fields of a multipart body, refusing it as soon as a limit is passed.

    Raises:
        FileTooLarge: A file part passed ``limits.file_bytes`` (the caller words the 413).
        HTTPException: 400 for a body that is not multipart, malformed, or breaks the
            form's rules; 413 when the declared length passes ``limits.body_bytes``.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=limits.not_multipart)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.body_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"the upload declares {size_text(int(declared))}, more than the "
            f"{size_text(limits.body_bytes)} this endpoint reads",
        )
    parts = _Parts(limits)
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)  # the callbacks raise as soon as a limit is passed
        parser.finalize()
    except _BadForm as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(error)) from None
    except FileTooLarge:
        raise
    except ValueError as error:  # python-multipart's FormParserError and friends
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail=f"malformed multipart body: {error}"
        ) from None
    return parts.form
