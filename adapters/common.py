"""What every adapter shares: the error a user can cause, and reading a source into bytes."""

import os
from pathlib import Path


class AdapterError(ValueError):
    """Media the adapters cannot use; the message is one sentence for the user."""


def read_source(source) -> bytes:
    """The bytes of a path, a binary file object or a bytes-like object; never empty."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read()
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AdapterError(f"There is no file at {path}.")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise AdapterError(f"Cannot read {path} ({e.strerror}).") from None
    else:
        raise AdapterError(f"Cannot read media from a {type(source).__name__}.")
    if not isinstance(data, bytes):
        raise AdapterError("The file must be opened in binary mode.")
    if not data:
        raise AdapterError("The file is empty.")
    return data
