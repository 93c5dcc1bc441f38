"""Does a real ``einc search`` stop cleanly when signalled at a random moment, on a busy machine?

    python bench/stress_signals.py                    # 30 SIGINTs, one CPU burner per core
    python bench/stress_signals.py --signal both -n 10
    python bench/stress_signals.py --quick            # smoke test: 2 runs, 1 burner, signal at 0.5-3 s
    python bench/stress_signals.py --window 0.5,8     # mostly start-up: imports, data, workers
    python bench/stress_signals.py -n 5 -- einc search --data digits10 --budget 8 --workers 1

Each run starts the search command (default: a small regularised-evolution search of
digits10 with 2 workers; one given after ``--`` replaces it, the harness adds ``--out``) as
``python -m einc.cli ...`` in a session of its own, stdout and stderr to files, then sends
the signal at a moment drawn uniformly from ``--window`` seconds after the start (start-up,
data loading, worker start, training, between evaluations: the default 0.5-25 s because on a
loaded 2-core machine the journal's first line came ~17 s in). SIGINT goes to the search's
process group, as Ctrl-C in a terminal would; SIGTERM to the search's pid alone, as ``kill``
would (``--to`` changes that). Meanwhile ``--burn`` processes spin a core each, so the stop
races a loaded machine.

A stop is CLEAN when all hold:

* the search process exits within ``--timeout`` seconds of the signal, with status 130 after
  SIGINT, 143 after SIGTERM (a search that had already exited 0 before the signal counts apart,
  as "finished before the signal");
* its stderr holds no "Traceback";
* its stderr holds the resume command ``einc search --out OUT --resume``, when the journal
  exists (a signal before anything was recorded may stop with another message: noted);
* nothing in its process group is alive ``--timeout`` seconds after the signal (zombies aside);
* the journal, if any, reads back with ``Journal(path).records()`` (a warning about a
  truncated last line is noted, not a failure).

Printed: a line per run, then one per failure (run, signal, moment, why), then per signal the
clean stops out of the runs signalled, how many finished before the signal or were signalled
before the journal existed, and the median and largest stop time (signal to
the last process of the search's group gone). A search still alive at the deadline has its
stacks dumped (``py-spy dump`` when on PATH or in the venv, else each process's
/proc/PID/wchan and State) into ``diagnostics.txt`` in its run folder before its group gets
SIGKILL; the folders of failed runs are kept. Exit status 0 only when every run was clean.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SEARCH = ["einc", "search", "--data", "digits10", "--strategy", "re", "--population", "4",
                  "--tournament", "2", "--budget", "50", "--epochs", "1", "--batch-size", "64",
                  "--max-params", "100000", "--workers", "2", "--seed", "0"]
SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM}
EXPECTED = {"INT": 130, "TERM": 143}
POLL_S = 0.02
EXCEPTION = re.compile(r"[\w.]*(Error|Exception|Interrupt|Exit|Warning|Failure)(:|$)")

# One core each; leaves when its parent (the harness) is gone, even after a SIGKILL of it.
BURNER = """
import os, sys
parent = int(sys.argv[1])
while True:
    for _ in range(200_000):
        pass
    if os.getppid() != parent:
        break
"""


@dataclass
class Outcome:
    run: int
    sig: str
    moment: float
    status: str = "clean"            # clean | finished | failed
    stop_s: float | None = None      # signal to the last process of the group gone
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    folder: Path | None = None
    journal: bool | None = None      # whether the search had written its journal (None: not checked)


# ------------------------------------------------------------------ processes

def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, state) of every live (not zombie) process whose process group is ``pgid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split at the last ')'
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) >= 3 and rest[0] != "Z" and int(rest[2]) == pgid:
            found.append((int(entry.name), rest[0]))
    return found


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read().strip()
    except OSError as e:
        return f"<{e.strerror}>"


def comm(pid: int) -> str:
    return _read(f"/proc/{pid}/comm")


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(here) if here.exists() else None)


def diagnose(pids: list[int], path: Path) -> None:
    """Each process's stack (py-spy) or kernel wait channel and state, into ``path``."""
    spy = _py_spy()
    lines = []
    for pid in pids:
        state = next((s for s in _read(f"/proc/{pid}/status").splitlines() if s.startswith("State:")), "State: ?")
        lines.append(f"=== pid {pid} ({comm(pid)}) {state}; wchan {_read(f'/proc/{pid}/wchan') or '-'}")
        lines.append(f"cmdline: {_read(f'/proc/{pid}/cmdline').replace(chr(0), ' ')}")
        if spy:
            try:
                r = subprocess.run([spy, "dump", "--pid", str(pid)], check=False, capture_output=True, text=True,
                                   timeout=15)
                lines.append(r.stdout + r.stderr)
            except (OSError, subprocess.TimeoutExpired) as e:
                lines.append(f"py-spy failed: {e}")
        lines.append("")
    if not spy:
        lines.append("(py-spy not found on PATH or in the venv: only wait channels and states)")
    path.write_text("\n".join(lines))


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Burners:
    """``k`` processes spinning a core each, for the harness's lifetime at most."""

    def __init__(self, k: int):
        self.procs = [subprocess.Popen([sys.executable, "-c", BURNER, str(os.getpid())],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
                      for _ in range(k)]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()


# ------------------------------------------------------------------ one run

def one_run(run: int, sig: str, moment: float, command: list[str], folder: Path, timeout: float,
            target: str, live: dict) -> Outcome:
    res = Outcome(run, sig, moment, folder=folder)
    out = folder / "out"
    stdout, stderr = folder / "stdout.txt", folder / "stderr.txt"
    with open(stdout, "wb") as so, open(stderr, "wb") as se:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "einc.cli", *command, "--out", str(out)],
                                stdin=subprocess.DEVNULL, stdout=so, stderr=se, start_new_session=True)
    live["pgid"] = proc.pid
    try:
        return _watch(res, proc, start, out, stderr, timeout, target)
    finally:
        kill_group(proc.pid)  # nothing of a run outlives it, whatever happened
        proc.wait()
        live.pop("pgid", None)


def _watch(res: Outcome, proc: subprocess.Popen, start: float, out: Path, stderr: Path,
           timeout: float, target: str) -> Outcome:
    time.sleep(max(0.0, start + res.moment - time.monotonic()))
    if proc.poll() is None:
        try:
            if target == "group":
                os.killpg(proc.pid, SIGNALS[res.sig])
            else:
                os.kill(proc.pid, SIGNALS[res.sig])
        except ProcessLookupError:
            pass
        sent = time.monotonic()
    else:
        sent = None
    if sent is None:  # exited before its moment came
        code = proc.wait()
        if code == 0:
            res.status = "finished"
            return res
        return _fail(res, f"exit {code} before the signal ({_last_line(stderr)})")

    deadline = sent + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    exited = proc.poll() is not None
    alive = group_members(proc.pid)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = group_members(proc.pid)
    if exited and not alive:
        res.stop_s = time.monotonic() - sent
    if alive:
        where = res.folder / "diagnostics.txt"
        diagnose([pid for pid, _ in alive], where)
        names = ", ".join(f"{pid} {comm(pid)} ({state})" for pid, state in alive)
        if not exited:
            _fail(res, f"still running {timeout:g} s after SIG{res.sig}; group: {names}; stacks in {where}")
        else:
            _fail(res, f"{len(alive)} processes alive {timeout:g} s after SIG{res.sig}: {names}; "
                       f"stacks in {where}")
        kill_group(proc.pid)
        if not exited:
            proc.wait()
            return res

    code = proc.returncode
    if code != EXPECTED[res.sig]:
        how = f"killed by {signal.Signals(-code).name} (no handler)" if code < 0 else f"exit {code}"
        _fail(res, f"{how}; stderr ends with {_last_line(stderr)}")
    text = stderr.read_text(errors="replace")
    if "Traceback (most recent call last)" in text:
        _fail(res, "Traceback in stderr: " + _traceback_tail(text))
    journal = out / "journal.jsonl"
    resumable = f"einc search --out {out} --resume" in text
    res.journal = journal.exists()
    if res.journal:
        if not resumable:
            _fail(res, f"no resume command in stderr ({_last_line(stderr)})")
        _check_journal(res, journal)
    else:
        said = "the resume command" if resumable else _last_line(stderr)
        res.notes.append(f"no journal (signal before anything was recorded); stderr ends with {said}")
    return res


def _check_journal(res: Outcome, path: Path) -> None:
    from einc.runtime.journal import Journal

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            n = len(Journal(path).records())
        except Exception as e:  # noqa: BLE001 - any failure to read it back is the finding
            _fail(res, f"journal unreadable: {type(e).__name__}: {e}")
            return
    for w in caught:
        res.notes.append(f"journal warning: {w.message}")
    res.notes.append(f"journal: {n} records")


def _fail(res: Outcome, why: str) -> Outcome:
    res.status = "failed"
    res.reasons.append(why)
    return res


def _last_line(path: Path) -> str:
    # tqdm redraws with \r: the last piece of the last line is what a terminal would show
    lines = [s for s in path.read_text(errors="replace").replace("\r", "\n").splitlines() if s.strip()]
    return repr(lines[-1][:160]) if lines else "stderr empty"


def _traceback_tail(text: str) -> str:
    """The first traceback in ``text`` in a line: its exception, innermost and outermost frame."""
    lines = text.replace("\r", "\n").splitlines()
    # several processes share the file, so a traceback may start mid-line, after a progress bar's
    first = next(i for i, s in enumerate(lines) if "Traceback (most recent call last)" in s)
    frames, exc = [], "?"
    for s in lines[first + 1:]:
        if s.lstrip().startswith('File "'):
            name, _, rest = s.strip()[6:].partition('", line ')
            frames.append(f"{'/'.join(Path(name).parts[-2:])}:{rest.split(',')[0]}")
        elif EXCEPTION.match(s):  # not merely unindented: progress bars and messages interleave
            exc = s.strip()
            break
    frames = [f for f in frames if not f.startswith("<")] or frames  # <string>, <frozen ...> say little
    where = f" at {frames[-1]}" + (f" (from {frames[0]})" if len(frames) > 1 else "") if frames else ""
    count = text.count("Traceback (most recent call last)")
    return f"{exc[:200]}{where}" + (f"; {count} tracebacks in all" if count > 1 else "")


# ------------------------------------------------------------------ main

def _window(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("give A,B in seconds, e.g. 0.5,8") from None
    if not 0 <= a <= b:
        raise argparse.ArgumentTypeError("need 0 <= A <= B")
    return a, b


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    else:
        command = []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [options] [-- einc search ARGS...]")
    p.add_argument("-n", type=int, default=30, help="runs per signal [default: 30]")
    p.add_argument("--signal", choices=["INT", "TERM", "BOTH"], type=str.upper, default="INT",
                   help="which signal; both runs N of each, alternating [default: INT]")
    p.add_argument("--to", choices=["auto", "pid", "group"], default="auto",
                   help="send it to the search's pid or its process group [default: auto: SIGINT to the "
                        "group like Ctrl-C, SIGTERM to the pid like kill]")
    p.add_argument("--burn", type=int, default=os.cpu_count() or 1,
                   help="CPU burner processes beside the search [default: one per core]; 0 for none")
    p.add_argument("--window", type=_window, default=(0.5, 25.0), metavar="A,B",
                   help="signal uniformly between A and B seconds after the start [default: 0.5,25; on a "
                        "loaded 2-core machine the journal starts ~17 s in]")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds a stop may take [default: 5]")
    p.add_argument("--seed", type=int, default=None, help="seed of the harness's own RNG (moments)")
    p.add_argument("--keep", action="store_true", help="keep every run folder (failed runs' are always kept)")
    p.add_argument("--quick", action="store_true", help="smoke test: n=2, burn=1, window 0.5,3")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.burn, args.window = 2, 1, (0.5, 3.0)
    if args.n < 1 or args.burn < 0 or args.timeout <= 0:
        p.error("need -n >= 1, --burn >= 0, --timeout > 0")
    command = command or list(DEFAULT_SEARCH)
    if command[:1] == ["einc"]:
        command = command[1:]
    if "--out" in command or any(a.startswith("--out=") for a in command):
        p.error("the harness sets --out per run: leave it out of the search command")
    return args, command


def summary_line(sig: str, runs: list[Outcome]) -> str:
    clean = [r for r in runs if r.status == "clean"]
    finished = sum(r.status == "finished" for r in runs)
    signalled = len(runs) - finished
    times = [r.stop_s for r in runs if r.stop_s is not None]
    stops = (f", median stop {statistics.median(times):.2f} s, max {max(times):.2f} s" if times
             else ", no stop timed")
    early = sum(r.journal is False for r in runs)
    notes = [f"{finished} finished before the signal"] if finished else []
    notes += [f"{early} signalled before the journal existed"] if early else []
    before = f" ({'; '.join(notes)})" if notes else ""
    return f"SIG{sig}: {len(clean)}/{signalled} clean stops{before}{stops}"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    sigs = ["INT", "TERM"] if args.signal == "BOTH" else [args.signal]
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="einc-stress-"))
    print(f"search: einc {' '.join(command)} --out {root}/runNN/out")
    print(f"{args.n} run(s) per signal of {', '.join('SIG' + s for s in sigs)}; {args.burn} burner(s); "
          f"signal at {args.window[0]:g}-{args.window[1]:g} s; timeout {args.timeout:g} s; "
          f"py-spy: {_py_spy() or 'not found'}")
    outcomes: list[Outcome] = []
    live: dict = {}
    burners = None
    # Python handlers, not SIG_IGN: an ignored signal stays ignored across exec (a harness started
    # in the background of a non-interactive shell inherits SIGINT ignored, and the search would
    # too), a handled one is reset to the default there. And the harness's SIGTERM unwinds like
    # Ctrl-C, so the burners and a running search die with it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        burners = Burners(args.burn)
        run = 0
        for _ in range(args.n):
            for sig in sigs:
                run += 1
                folder = root / f"run{run:02d}"
                folder.mkdir()
                moment = rng.uniform(*args.window)
                target = args.to if args.to != "auto" else ("group" if sig == "INT" else "pid")
                res = one_run(run, sig, moment, command, folder, args.timeout, target, live)
                outcomes.append(res)
                mark = {"clean": "clean", "finished": "finished before the signal", "failed": "FAILED"}[res.status]
                took = f" in {res.stop_s:.2f} s" if res.stop_s is not None else ""
                print(f"run {run:2d} SIG{sig:<4} at {moment:5.2f} s: {mark}{took}"
                      + "".join(f"; {n}" for n in res.notes), flush=True)
                if res.status != "failed" and not args.keep:
                    shutil.rmtree(folder, ignore_errors=True)
    except KeyboardInterrupt:
        print("\ninterrupted: partial results", file=sys.stderr)
    finally:
        if "pgid" in live:
            kill_group(live["pgid"])
        if burners is not None:
            burners.stop()

    failed = [r for r in outcomes if r.status == "failed"]
    if failed:
        print("\nfailures:")
        for r in failed:
            print(f"run {r.run:2d} SIG{r.sig} at {r.moment:.2f} s: " + "; ".join(r.reasons))
    print()
    for sig in sigs:
        runs = [r for r in outcomes if r.sig == sig]
        if runs:
            print(summary_line(sig, runs))
    if failed or args.keep:
        print(f"run folders kept in {root}" + ("" if args.keep else " (failed runs only)"))
    else:
        shutil.rmtree(root, ignore_errors=True)
    complete = len(outcomes) == args.n * len(sigs)
    return 0 if complete and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
