"""IDX files (the MNIST family's raw format): checked, and decompressed atomically.

An IDX file is a 4-byte magic number ``0x00 0x00 TYPE NDIM`` (TYPE 0x08: unsigned bytes),
NDIM big-endian 32-bit sizes, then the values: ``4 + 4 NDIM + prod(sizes)`` bytes in all.
:func:`is_valid_idx` checks that much (cheaply: the header and the file size), so an empty or
cut-off file left by an interrupted decompression is never taken for data;
:func:`decompress_idx` writes the decompressed file beside its target and renames it only
once it is whole and valid.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

UNSIGNED_BYTE = 0x08


def is_valid_idx(path: Path) -> bool:
    """Whether ``path`` is a whole IDX file of unsigned bytes (header and size agree)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != UNSIGNED_BYTE \
                    or not 1 <= magic[3] <= 4:
                return False
            dims = struct.unpack(f">{magic[3]}i", handle.read(4 * magic[3]))
    except (OSError, struct.error):
        return False
    return size == 4 + 4 * len(dims) + math.prod(dims)


def decompress_idx(gz: Path, target: Path) -> None:
    """Decompress ``gz`` to ``target`` atomically; ``ValueError`` naming ``gz`` when it is
    damaged (not gzip, truncated, or not an IDX file inside), leaving no partial file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(gz, "rb") as source:
            shutil.copyfileobj(source, out)
            out.flush()
            os.fsync(out.fileno())
        if not is_valid_idx(Path(tmp)):
            raise ValueError("not an IDX file of unsigned bytes (wrong magic number or size)")
        os.replace(tmp, target)
    except (OSError, EOFError, zlib.error, ValueError) as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, gzip.BadGzipFile) \
                and error.errno is not None:
            raise  # a file-system fault (disk full, permissions): not the archive's
        raise ValueError(f"{gz} is damaged ({type(error).__name__}: {error}); replace it, "
                         "or delete it and pass --download") from None
