"""An incremental ``multipart/form-data`` parser (RFC 7578) with limits, for ``POST /v1/files``.

PURE: bytes in, events out; no I/O. The route feeds it the request body chunk by chunk and writes
the file part's data to disk as it arrives, so an upload of 200 MB never sits in memory. Limits:
each part's header block (``max_header_bytes``), the number of parts (``max_parts``); the body's
total size is the caller's (it counts the bytes it feeds). Malformed input raises
``MultipartError`` (a 400), never anything else.

Why not ``python-multipart``: the stdlib has no multipart parser any more (``cgi`` is gone), and
the part of it needed here is ~100 lines that are easier to bound and test than a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelyard.errors import InvalidRequestError


class MultipartError(InvalidRequestError):
    code = "invalid_multipart"


@dataclass(frozen=True, slots=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


Event = PartStart | Data | PartEnd


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data; boundary=...`` content type (400 otherwise)."""
    if not content_type:
        raise MultipartError("the request needs Content-Type: multipart/form-data (the file upload)")
    kind, params = _params(content_type)
    if kind != "multipart/form-data":
        raise MultipartError(f"expected Content-Type multipart/form-data, got {kind[:64]!r}")
    b = params.get("boundary", "")
    if not 1 <= len(b) <= 70:
        raise MultipartError("multipart/form-data without a valid boundary parameter")
    return b.encode("latin-1")


def _params(value: str) -> tuple[str, dict[str, str]]:
    """``kind; a=1; b="x;y"`` → ("kind", {"a": "1", "b": "x;y"}); quoted strings may escape with ``\\``."""
    i, n = 0, len(value)
    semi = value.find(";")
    kind = (value if semi < 0 else value[:semi]).strip().lower()
    params: dict[str, str] = {}
    i = n if semi < 0 else semi + 1
    while i < n:
        eq = value.find("=", i)
        if eq < 0:
            break
        key = value[i:eq].strip().lower()
        i = eq + 1
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] == '"':
            i += 1
            out = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(value[i])
                i += 1
            val = "".join(out)
            i += 1
            semi = value.find(";", i)
            i = n if semi < 0 else semi + 1
        else:
            semi = value.find(";", i)
            val = (value[i:] if semi < 0 else value[i:semi]).strip()
            i = n if semi < 0 else semi + 1
        params[key] = val
    return kind, params


@dataclass(slots=True)
class Parser:
    boundary: bytes
    max_header_bytes: int = 16 * 1024
    max_parts: int = 16
    _buf: bytearray = field(default_factory=bytearray)
    _state: str = "preamble"  # preamble | headers | body | after | done
    _parts: int = 0
    _delim: bytes = b""
    _sep: bytes = b""

    def __post_init__(self) -> None:
        self._delim = b"--" + self.boundary
        self._sep = b"\r\n" + self._delim

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, chunk: bytes) -> list[Event]:
        if self._state == "done":
            return []  # the epilogue: ignored
        self._buf += chunk
        out: list[Event] = []
        while True:
            st = self._state
            buf = self._buf
            if st == "preamble":
                # the first delimiter opens the body (RFC 2046 allows a preamble before it)
                if buf.startswith(self._delim):
                    del buf[: len(self._delim)]
                    self._state = "after"
                    continue
                i = buf.find(self._sep)
                if i < 0:
                    if len(buf) > self.max_header_bytes:
                        raise MultipartError("multipart body: no boundary found where the first part should start")
                    keep = len(self._sep) - 1
                    if len(buf) > keep:
                        del buf[: len(buf) - keep]
                    return out
                del buf[: i + len(self._sep)]
                self._state = "after"
            elif st == "after":
                stripped = buf.lstrip(b" \t")
                if len(stripped) < 2:
                    return out
                if stripped.startswith(b"--"):
                    self._state = "done"
                    buf.clear()
                    return out
                if not stripped.startswith(b"\r\n"):
                    raise MultipartError("multipart body: malformed boundary line")
                del buf[: len(buf) - len(stripped) + 2]
                self._parts += 1
                if self._parts > self.max_parts:
                    raise MultipartError(f"multipart body: more than {self.max_parts} parts")
                self._state = "headers"
            elif st == "headers":
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if buf.startswith(b"\r\n"):  # a part with no headers at all
                        raise MultipartError("multipart part without a Content-Disposition header")
                    if len(buf) > self.max_header_bytes:
                        raise MultipartError(f"multipart part headers exceed {self.max_header_bytes} bytes")
                    return out
                if i > self.max_header_bytes:
                    raise MultipartError(f"multipart part headers exceed {self.max_header_bytes} bytes")
                out.append(_part_start(bytes(buf[:i])))
                del buf[: i + 4]
                self._state = "body"
            elif st == "body":
                i = buf.find(self._sep)
                if i < 0:
                    keep = len(self._sep) - 1  # a delimiter may straddle two chunks
                    if len(buf) > keep:
                        out.append(Data(bytes(buf[: len(buf) - keep])))
                        del buf[: len(buf) - keep]
                    return out
                if i:
                    out.append(Data(bytes(buf[:i])))
                out.append(PartEnd())
                del buf[: i + len(self._sep)]
                self._state = "after"
            else:  # pragma: no cover - "done" returns above
                return out

    def close(self) -> None:
        """The body ended: it must have ended with the closing delimiter."""
        if self._state != "done":
            raise MultipartError("multipart body ended before its closing boundary")


def _part_start(block: bytes) -> PartStart:
    name = filename = ctype = None
    disposition = False
    for raw in block.split(b"\r\n"):
        key, sep, val = raw.partition(b":")
        if not sep:
            raise MultipartError("multipart part header without ':'")
        k = key.strip().lower()
        v = val.strip().decode("utf-8", "replace")
        if k == b"content-disposition":
            kind, params = _params(v)
            if kind != "form-data":
                raise MultipartError(f"multipart part disposition must be form-data, got {kind[:32]!r}")
            disposition = True
            name = params.get("name")
            filename = params.get("filename")
        elif k == b"content-type":
            ctype = v
    if not disposition or not name:
        raise MultipartError("multipart part without a Content-Disposition name")
    return PartStart(name, filename, ctype)
