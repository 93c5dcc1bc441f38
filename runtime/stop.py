"""Stopping a search on a signal: SIGINT (Ctrl-C) and SIGTERM (a batch scheduler) stop it cleanly.

A signal's default disposition cannot be trusted: a shell script that starts ``einc search ... &``
hands it SIGINT *ignored* (POSIX does this for background jobs without job control), and Python
then never raises KeyboardInterrupt: the search runs on. ``stop_on_signals`` installs handlers
for both signals whatever was inherited. The first signal raises ``Stopped`` in the main thread
(as Ctrl-C raises KeyboardInterrupt), so whatever is in flight is abandoned where it stands: the
journal already holds every finished evaluation, and the caller's ``finally`` blocks stop the
workers with bounded waits. A second signal does not wait for that: it kills this process's
worker processes and exits at once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The search was told to stop by signal ``signum``; exit with ``code`` (130 for SIGINT, 143 for SIGTERM).

    A KeyboardInterrupt, so that ``except Exception`` never swallows it and code written for
    Ctrl-C handles SIGTERM the same way.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def code(self) -> int:
        return 128 + self.signum


def kill_children() -> None:
    """SIGKILL every process this one started with multiprocessing (workers, the fork server)."""
    pids = [p.pid for p in multiprocessing.active_children() if p.pid is not None]
    with contextlib.suppress(Exception):  # private: the fork server's pid, where one was started
        from multiprocessing import forkserver

        pids.append(forkserver._forkserver._forkserver_pid)  # type: ignore[attr-defined]
    for pid in pids:
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block SIGINT and SIGTERM raise ``Stopped``; a second one exits at once.

    Only the main thread can install handlers: elsewhere (a notebook's worker thread) the block
    changes nothing and the host's own handling stays.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        if received:  # the second signal: the user does not want to wait for the clean stop
            kill_children()
            os.write(2, f"\n{signal.Signals(signum).name} again: stopped at once\n".encode())
            os._exit(128 + signum)
        received.append(signum)
        raise Stopped(signum)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def exit_code(e: BaseException) -> int:
    """The shell's code for a stop: 128 + the signal (a plain KeyboardInterrupt counts as SIGINT)."""
    return e.code if isinstance(e, Stopped) else 128 + signal.SIGINT

