"""batch/multipart.py against bodies made by httpx's own multipart encoder (what the openai SDK sends),
fed in chunks of every size, and against malformed bodies."""

from __future__ import annotations

import httpx
import pytest

from modelyard.batch.multipart import Data, MultipartError, Parser, PartEnd, PartStart, boundary_of


def encoded(content: bytes, **data: str) -> tuple[str, bytes]:
    req = httpx.Request("POST", "http://x/v1/files", data=data, files={"file": ("in.jsonl", content, "application/jsonl")})
    return req.headers["content-type"], req.read()


def parse(ct: str, body: bytes, step: int) -> tuple[dict[str, str], bytes, str | None]:
    p = Parser(boundary_of(ct))
    fields: dict[str, str] = {}
    name = filename = None
    buf = bytearray()
    file = bytearray()
    for i in range(0, len(body), step):
        for ev in p.feed(body[i:i + step]):
            if isinstance(ev, PartStart):
                name, buf = ev.name, bytearray()
                if ev.name == "file":
                    filename = ev.filename
            elif isinstance(ev, Data):
                (file if name == "file" else buf).extend(ev.data)
            elif isinstance(ev, PartEnd):
                if name != "file":
                    fields[name or ""] = buf.decode()
    p.close()
    return fields, bytes(file), filename


# a file that contains what looks like a boundary start and CRLFs at the edges
CONTENT = b'{"custom_id": "a"}\r\n--not-the-boundary\r\n\r\n' + bytes(range(256)) * 40 + b"\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 1000, 1 << 20])
def test_the_sdks_body_parses_whatever_the_chunking(step: int) -> None:
    ct, body = encoded(CONTENT, purpose="batch")
    fields, file, filename = parse(ct, body, step)
    assert fields == {"purpose": "batch"} and file == CONTENT and filename == "in.jsonl"


def test_an_empty_file_part_and_several_fields() -> None:
    ct, body = encoded(b"", purpose="batch", **{"expires_after[anchor]": "created_at"})
    fields, file, _ = parse(ct, body, 5)
    assert file == b"" and fields == {"purpose": "batch", "expires_after[anchor]": "created_at"}


def test_the_content_type_must_be_multipart_with_a_boundary() -> None:
    assert boundary_of('multipart/form-data; boundary="a b;c"') == b"a b;c"
    for bad in (None, "application/json", "multipart/form-data", "multipart/form-data; boundary=" + "x" * 71):
        with pytest.raises(MultipartError):
            boundary_of(bad)


def test_a_body_cut_short_is_an_error() -> None:
    ct, body = encoded(b"data", purpose="batch")
    p = Parser(boundary_of(ct))
    p.feed(body[:-10])
    with pytest.raises(MultipartError):
        p.close()


@pytest.mark.parametrize("body", [
    b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n",  # no content-disposition
    b"--B\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--B--\r\n",
    b"--B\r\nno colon here\r\n\r\nx\r\n--B--\r\n",
    b"--Bxx\r\n",  # garbage after the delimiter
])
def test_malformed_parts_are_errors(body: bytes) -> None:
    p = Parser(b"B")
    with pytest.raises(MultipartError):
        p.feed(body)
        p.close()


def test_limits_on_headers_and_parts() -> None:
    p = Parser(b"B", max_header_bytes=100)
    with pytest.raises(MultipartError, match="headers exceed"):
        p.feed(b"--B\r\nContent-Disposition: form-data; name=a; x=" + b"y" * 200)
    p = Parser(b"B", max_parts=2)
    part = b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nv\r\n'
    with pytest.raises(MultipartError, match="more than 2 parts"):
        p.feed(part * 3 + b"--B--\r\n")
    p = Parser(b"B", max_header_bytes=100)
    with pytest.raises(MultipartError, match="no boundary"):
        p.feed(b"x" * 500)


def test_a_preamble_and_an_epilogue_are_ignored() -> None:
    body = b'preamble\r\n--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--B--\r\nepilogue'
    p = Parser(b"B")
    evs = p.feed(body) + p.feed(b"more epilogue")
    p.close()
    assert [type(e).__name__ for e in evs] == ["PartStart", "Data", "PartEnd"]
    assert evs[1] == Data(b"batch")
