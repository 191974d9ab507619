"""Text ⇄ bytes: UTF-8, decoded so that any byte stream (even one cut mid-character) shows."""

from .common import read_source

# Decoding with "surrogateescape" turns each invalid byte into one lone surrogate in
# U+DC80..U+DCFF; we show those as U+FFFD, so every invalid byte is one character.
_ESCAPE_TO_REPLACEMENT = {code: "\ufffd" for code in range(0xDC80, 0xDD00)}


def read(path) -> bytes:
    """The bytes of a text file (a path or a binary file object)."""
    return read_source(path)


def encode(text: str) -> bytes:
    return text.encode("utf-8", errors="replace")  # a lone surrogate becomes "?" instead of failing


def decode(data: bytes) -> str:
    """Never fails; one U+FFFD per invalid byte, so the result lines up with char_spans(data)."""
    return data.decode("utf-8", errors="surrogateescape").translate(_ESCAPE_TO_REPLACEMENT)


def char_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte span of each character of decode(data); the spans tile [0, len(data))."""
    spans, start = [], 0
    for char in data.decode("utf-8", errors="surrogateescape"):
        end = start + (1 if 0xDC80 <= ord(char) < 0xDD00 else len(char.encode("utf-8")))
        spans.append((start, end))
        start = end
    return spans
