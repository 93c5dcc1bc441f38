"""A durable results journal: one JSON object per line, fsync'd, readable with any JSON-lines tool.

A search appends one record per event and resumes by reading them back, so the file must
survive a crash at any instant. Each ``append`` writes one whole line, flushes and fsyncs before
returning. A crash mid-write can only leave a damaged *last* line: cut short, or NUL bytes where
the write never reached the disk (what ext4 or XFS can show after a power cut). Reading
tolerates it with a ``JournalWarning``; the next ``append`` first copies that line to
``<journal>.damaged`` (fsync'd), then cuts it from the journal, so new lines start clean and no
byte is silently lost.

Damage anywhere else is not a crash's: reading stops at the first such line with a one-line error
(``path:LINE: error: ...``) and changes nothing. That is a line that is not a JSON object (a
record cut short with more written after it, two records run together, NUL bytes, invalid
UTF-8, NaN) and a record whose fields lack the kinds and types below. Records are checked here,
once, so that resuming and reporting never meet a wrong field later as a traceback; ``append``
refuses a record that reading would refuse. The error says what to do: repair the line, or move
it and every line after it aside by hand: a prefix of the journal is what a kill at that moment
would have left, so a resumed search redoes what those lines held. Moving out one middle line
alone may not resume, as the records after one depend on it.

Records (``kind``; a record without one is an ``eval``: journals of an einc that wrote no
proposals). Required keys per kind::

    proposal      index, arch              the strategy proposed ``arch`` as number ``index``
    eval          index, arch, status      its evaluation finished (or reused ``duplicate_of``'s)
    session       started                  a process started (or resumed) the search
    final         -                        the best architecture retrained and tested
    warmup        chosen                   the initial population a zero-cost proxy chose (runtime/warmup.py)

Types checked wherever a key appears (keys may be added; readers ignore unknown ones)::

    index, of, duplicate_of, rung, epochs, retries     int >= 0
    parent, params, flops, activations                 int >= 0 | None
    arch                                               str: canonical architecture (bracket notation)
    grammar_hash                                       str | None
    status                                             "ok" | "failed"
    metrics        dict: {"val_acc": float, "train_loss": float, "epochs": int, ...}; {} when failed;
                   val_acc and test_acc are numbers (or None) where present
    timing         dict of numbers (seconds per phase: build, train, ...)
    seconds, started, finished, ready                  number (seconds; the last three epoch times)
    workers                                            int >= 1

Unchecked, as the search writes them: seed (int), strategy, origin, worker (str | None),
reason (str | None: "ExceptionType: message" when failed), resumed (bool), pid (int).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from einc.errors import EinError


class JournalError(EinError):
    """The journal cannot be read or written; the message names the file and line."""


class JournalWarning(UserWarning):
    """A recoverable journal fault (a damaged last line) that the user should hear about."""


class Record(TypedDict, total=False):
    """One journal line; see the module docstring for the meaning of each key."""

    index: int
    kind: str
    arch: str
    grammar_hash: str | None
    seed: int
    status: str
    reason: str | None
    metrics: dict[str, Any]
    params: int | None
    flops: int | None
    activations: int | None
    seconds: float
    timing: dict[str, float]
    started: float
    finished: float
    worker: str | None
    strategy: str
    origin: str
    parent: int | None
    duplicate_of: int
    rung: int
    epochs: int


KINDS: dict[str, tuple[str, ...]] = {
    "proposal": ("index", "arch"),
    "eval": ("index", "arch", "status"),
    "session": ("started",),
    "final": (),
    "warmup": ("chosen",),
}
"""Each kind of record the search writes, and the keys it cannot do without."""


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
        problem = _problem(_DECODER.decode(line))  # as reading will see it (numpy scalars converted)
        if problem is not None:
            raise JournalError(f"{self.path}: error: refusing to write a record that reading would refuse: "
                               f"{problem}")
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
        """Every record in order; a missing file is an empty journal. Reading changes nothing."""
        data = self._read()
        cut = _damaged_tail(data)
        body = data if cut is None else data[:cut]
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            first = body.rfind(b"\n", 0, e.start) + 1
            self._parse(body[:first].decode("utf-8"), data)  # a damaged line before this one is the first
            end = body.find(b"\n", e.start)
            raise self._error(body.count(b"\n", 0, first) + 1, data,
                              f"the line {_damage(body[first:] if end == -1 else body[first:end])}") from None
        out = self._parse(text, data)
        if cut is not None:
            lineno = data.count(b"\n", 0, cut) + 1
            warnings.warn(f"{self.path}:{lineno}: warning: ignoring a {_tail_note(data[cut:])}; "
                          f"the next append moves it to {self.side_path}", JournalWarning, stacklevel=2)
        return out

    def __len__(self) -> int:
        return len(self.records())

    # ------------------------------------------------------------------ internals

    def _parse(self, text: str, data: bytes) -> list[dict[str, Any]]:
        """The records of ``text``, whole lines of the file ``data`` (blank lines skipped).

        The fast path is one parse and one check per line; the error path explains."""
        decode, out = _DECODER.decode, []
        for n, line in enumerate(text.split("\n"), 1):
            try:
                record = decode(line)
            except ValueError:  # a JSONDecodeError, or NaN
                if not line.strip():
                    continue
                raise self._error(n, data, f"the line {_damage(line.encode('utf-8'))}") from None
            if type(record) is not dict:
                raise self._error(n, data, f"a journal line must be a JSON object, not {type(record).__name__}")
            problem = _problem(record)
            if problem is not None:
                raise self._error(n, data, problem)
            out.append(record)
        return out

    def _error(self, lineno: int, data: bytes, problem: str) -> JournalError:
        """A damaged line: what to do names the lines to move aside by hand for the journal to resume.

        Any prefix of the journal is what a kill at that moment would have left, so moving the
        line and every line after it aside always resumes; moving the line alone may not (the
        records after it depend on it)."""
        after = data.count(b"\n") + (not data.endswith(b"\n")) - lineno
        which = f"it and the {after} line{'s' * (after > 1)} after it" if after else "it"
        return JournalError(f"{self.path}:{lineno}: error: {problem}; repair the line, or move {which} by hand "
                            f"to {self.side_path.name} (a resumed search redoes what {'they' if after else 'it'} "
                            "held)")

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as e:
            raise JournalError(f"{self.path}: error: cannot read the journal ({e.strerror or e})") from None

    def _prepare(self) -> None:
        """Before the first append: create the folder, and move a damaged last line aside."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self._read()
        cut = _damaged_tail(data)
        if cut is not None:
            tail, lineno = data[cut:], data.count(b"\n", 0, cut) + 1
            # Side file first, fsync'd, then truncate: a crash in between duplicates, never loses.
            with open(self.side_path, "ab") as side:
                side.write(tail if tail.endswith(b"\n") else tail + b"\n")
                side.flush()
                os.fsync(side.fileno())
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            warnings.warn(f"{self.path}:{lineno}: warning: moved a {_tail_note(tail)} to {self.side_path}",
                          JournalWarning, stacklevel=3)
        elif data and not data.endswith(b"\n"):
            self._write_at(len(data), b"\n")  # a whole record that lost only its newline
        self._ready = True

    def _write_at(self, size: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(size)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------- reading lines


def _no_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
"""Plain JSON, as ``append`` writes it: NaN and Infinity are refused (a NaN accuracy would beat every other)."""


def _complete(raw: bytes) -> dict[str, Any] | None:
    """The record in ``raw`` if it is a whole JSON object (a proper prefix of one never parses)."""
    try:
        record = _DECODER.decode(raw.decode("utf-8"))
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _damaged_tail(data: bytes) -> int | None:
    """Where the damaged last line a crash can leave starts, if there is one.

    That is a last line without its newline that is not a whole record (a write cut short), or
    a last line with NUL bytes and no whole record in it (a write that never reached the disk).
    Damage anywhere else is not a crash's and is left to the reader's error."""
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        return cut if tail.strip() and _complete(tail) is None else None
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    last = data[cut:-1]
    if b"\0" not in last:
        return None
    try:
        text = last.decode("utf-8")
    except UnicodeDecodeError:
        return cut
    return None if _starts_whole(text) or _whole_after(text) is not None else cut


def _tail_note(tail: bytes) -> str:
    size = len(tail.rstrip(b"\n"))
    if b"\0" in tail:
        nul = tail.count(b"\0")
        what = f"{nul} NUL bytes" if nul == size else f"{size} bytes, {nul} of them NUL"
        return f"damaged last line ({what}; a crash or power cut?)"
    return f"truncated last line ({size} bytes; a crash mid-write?)"


def _damage(raw: bytes) -> str:
    """What is wrong with a line that does not parse, in a few words (the error path: may be slow)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        col = len(raw[:e.start].decode("utf-8", "replace")) + 1
        return f"is not UTF-8 (byte 0x{raw[e.start]:02X} at column {col})"
    whole = _whole_after(text)
    then = f", then a whole one from column {whole + 1}" if whole is not None else ""
    if "\0" in text:
        nul, start = text.count("\0"), text.index("\0")
        return (f"holds {nul} NUL bytes from column {start + 1}{then} (what a crash or a power cut leaves "
                "where a write never reached the disk)")
    try:
        _DECODER.decode(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return f"holds more after a whole record (from column {e.colno}: two writes run together?)"
        if whole is not None:
            return f"holds a record cut short{then} (a write cut short, another appended to it)"
        at = "" if e.msg.endswith(" at") else " at"
        return f"is not JSON ({e.msg}{at} column {e.colno}; a write cut short?)"
    except ValueError as e:  # NaN or Infinity
        return f"is not plain JSON ({e})"
    return "is not a JSON object"  # not reached: the line failed to parse


def _starts_whole(text: str) -> bool:
    """Whether ``text`` begins with a whole JSON object (whatever follows it)."""
    try:
        value, _ = _DECODER.raw_decode(text)
    except ValueError:
        return False
    return isinstance(value, dict)


def _whole_after(text: str) -> int | None:
    """Where a whole JSON object that ends the line starts, after damage before it (offset > 0)."""
    end = len(text.rstrip())
    start = text.find("{", 1)
    tries = 0
    while start != -1 and tries < 10_000:
        try:
            value, stop = _DECODER.raw_decode(text, start)
        except ValueError:
            pass
        else:
            if stop == end and isinstance(value, dict):
                return start
        start, tries = text.find("{", start + 1), tries + 1
    return None


# ---------------------------------------------------------------------- checking records


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _number(v: Any) -> bool:
    return type(v) is float or type(v) is int


def _maybe_count(v: Any) -> bool:
    return v is None or (type(v) is int and v >= 0)


def _metrics(v: Any) -> bool:
    if type(v) is not dict:
        return False
    for key in ("val_acc", "test_acc"):
        x = v.get(key)
        if x is not None and type(x) is not float and type(x) is not int:
            return False
    return True


def _timing(v: Any) -> bool:
    return type(v) is dict and all(type(x) is float or type(x) is int for x in v.values())


_COUNT = (_count, "an integer >= 0")
_NUMBER = (_number, "a number")
_MAYBE_COUNT = (_maybe_count, "an integer >= 0 or null")

FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "index": _COUNT, "of": _COUNT, "duplicate_of": _COUNT, "rung": _COUNT, "epochs": _COUNT, "retries": _COUNT,
    "parent": _MAYBE_COUNT, "params": _MAYBE_COUNT, "flops": _MAYBE_COUNT, "activations": _MAYBE_COUNT,
    "arch": (lambda v: type(v) is str, "a string"),
    "grammar_hash": (lambda v: v is None or type(v) is str, "a string or null"),
    "status": (lambda v: v in ("ok", "failed"), '"ok" or "failed"'),
    "metrics": (_metrics, "an object whose val_acc and test_acc are numbers"),
    "timing": (_timing, "an object of numbers"),
    "seconds": _NUMBER, "started": _NUMBER, "finished": _NUMBER, "ready": _NUMBER,
    "workers": (lambda v: type(v) is int and v >= 1, "an integer >= 1"),
}
"""The keys a reader of the journal relies on: (check, what the value must be)."""


def _problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a record (one line), or None when every relied-on key is as it must be."""
    kind = record.get("kind", "eval")
    required = KINDS.get(kind) if type(kind) is str else None
    if required is None:
        return f"unknown record kind {_show(kind)} (einc writes {', '.join(KINDS)})"
    for key in required:
        if key not in record:
            return f"{_name(kind, record)} lacks \"{key}\""
    for key, value in record.items():
        spec = FIELDS.get(key)
        if spec is not None and not spec[0](value):
            return f"{_name(kind, record)}: \"{key}\" must be {spec[1]}, not {_show(value)}"
    return None


def _name(kind: str, record: dict[str, Any]) -> str:
    index = record.get("index")
    return f"{kind} record {index}" if _count(index) else f"{kind} record"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def json_default(value: Any) -> Any:
    """``json.dumps`` hook: numpy scalars (np.float32 accuracies, np.int64 counts) become plain numbers."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        item = value.item()
        if isinstance(item, (int, float, bool, str)):
            return item
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
