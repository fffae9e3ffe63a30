"""Events already in contract form, one JSON object per line (optionally gzipped)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec

from state.errors import DatasetError
from state.events import Event

from ._order import open_binary

# The tagged union, so that a missing or unknown ``type`` is an error, not a default.
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def read(path: Path) -> Iterator[Event]:
    """Decode ``path`` lazily, in file order; blank lines are skipped.

    Raises ``DatasetError`` naming the file and 1-based line number of the first line that
    is not JSON or breaks the contract.
    """
    if not path.is_file():
        # Checked here, not in the generator, so the error comes at the call.
        raise DatasetError(f"jsonl: file not found: {path}")
    return _decode_lines(path)


def _decode_lines(path: Path) -> Iterator[Event]:
    with open_binary(path) as fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield _decoder.decode(raw)
            except msgspec.DecodeError as exc:  # ValidationError is a subclass
                raise DatasetError(f"{path}:{line_no}: invalid event: {exc}") from exc
