"""A durable results journal: one JSON object per line, fsync'd, readable with any JSON-lines tool.

A search appends one record per evaluated candidate and resumes by reading them back, so the file
must survive a crash at any instant. Each ``append`` writes one whole line, flushes and fsyncs
before returning. A crash mid-write can only leave a truncated *last* line: reading tolerates it
with a ``JournalWarning``; the next ``append`` first copies that fragment to ``<journal>.damaged``
(fsync'd), then cuts it from the journal, so new lines start clean and no byte is silently lost.
Any other unreadable line is an error naming the file and line number.

Record schema used by the search (keys may be added; readers ignore unknown ones)::

    index         int   position in the search, 0-based
    arch          str   canonical architecture string (bracket notation)
    grammar_hash  str   hash of the compiled grammar the arch derives from
    seed          int   training seed
    status        str   "ok" | "failed"
    reason        str | None   why it failed, "ExceptionType: message" (None when ok)
    metrics       dict  {"val_acc": float, "train_loss": float, "epochs": int, ...}; {} when failed
    params        int | None   trainable parameter count
    flops         int | None   forward FLOPs for one sample
    seconds       float wall-clock time of the evaluation
    strategy      str   e.g. "random", "evolution"
    parent        int | None   index of the record this one was mutated from
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, TypedDict

from einc.errors import EinError


class JournalError(EinError):
    """The journal cannot be read or written; the message names the file and line."""


class JournalWarning(UserWarning):
    """A recoverable journal fault (a truncated last line) that the user should hear about."""


class Record(TypedDict, total=False):
    """One journal line; see the module docstring for the meaning of each key."""

    index: int
    arch: str
    grammar_hash: str
    seed: int
    status: str
    reason: str | None
    metrics: dict[str, Any]
    params: int | None
    flops: int | None
    seconds: float
    strategy: str
    parent: int | None


class Journal:
    """Append-only JSON-lines file at ``path``; constructing one reads and changes nothing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.side_path = self.path.with_name(self.path.name + ".damaged")
        self._ready = False  # tail repaired and parent folder present: checked once, on first append

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line; returns only once it is on disk (flush + fsync)."""
        if not isinstance(record, dict):
            raise TypeError(f"a journal record is a dict, not {type(record).__name__}")
        try:
            line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=json_default)
        except (TypeError, ValueError) as e:
            raise JournalError(f"{self.path}: error: record is not plain JSON ({e})") from None
        if not self._ready:
            self._prepare()
        try:
            with open(self.path, "ab") as f:
                f.write(line.encode("utf-8") + b"\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise JournalError(f"{self.path}: error: cannot write the journal ({e.strerror or e})") from None

    def records(self) -> list[dict[str, Any]]:
        """Every record in order; a missing file is an empty journal."""
        data = self._read()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, as every complete write does
        out = [self._parse(raw, n) for n, raw in enumerate(lines, 1) if raw.strip()]
        if tail.strip():
            record = _complete(tail)
            if record is not None:
                out.append(record)  # whole record, only its newline lost: keep it
            else:
                warnings.warn(f"{self.path}:{len(lines) + 1}: warning: ignoring a truncated last line "
                              f"({len(tail)} bytes; a crash mid-write?); the next append moves it to "
                              f"{self.side_path}", JournalWarning, stacklevel=2)
        return out

    def __len__(self) -> int:
        return len(self.records())

    # ------------------------------------------------------------------ internals

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as e:
            raise JournalError(f"{self.path}: error: cannot read the journal ({e.strerror or e})") from None

    def _parse(self, raw: bytes, lineno: int) -> dict[str, Any]:
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise JournalError(f"{self.path}:{lineno}: error: corrupt journal line ({_reason(e)}); "
                               "fix or remove it by hand") from None
        if not isinstance(record, dict):
            raise JournalError(f"{self.path}:{lineno}: error: a journal line must be a JSON object, "
                               f"not {type(record).__name__}")
        return record

    def _prepare(self) -> None:
        """Before the first append: create the folder, and move a truncated last line aside."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self._read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if _complete(tail) is not None or not tail.strip():
                self._write_at(len(data), b"\n")  # a whole record that lost only its newline
            else:
                lineno = data.count(b"\n") + 1
                # Side file first, fsync'd, then truncate: a crash in between duplicates, never loses.
                with open(self.side_path, "ab") as side:
                    side.write(tail + b"\n")
                    side.flush()
                    os.fsync(side.fileno())
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
                    f.flush()
                    os.fsync(f.fileno())
                warnings.warn(f"{self.path}:{lineno}: warning: moved a truncated last line ({len(tail)} "
                              f"bytes; a crash mid-write?) to {self.side_path}", JournalWarning, stacklevel=3)
        self._ready = True

    def _write_at(self, size: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(size)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _complete(raw: bytes) -> dict[str, Any] | None:
    """The record in ``raw`` if it is a whole JSON object (a proper prefix of one never parses)."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def json_default(value: Any) -> Any:
    """``json.dumps`` hook: numpy scalars (np.float32 accuracies, np.int64 counts) become plain numbers."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        item = value.item()
        if isinstance(item, (int, float, bool, str)):
            return item
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _reason(e: BaseException) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at column {e.colno}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__
