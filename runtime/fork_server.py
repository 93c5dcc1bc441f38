"""The first module the workers' fork server imports: from then on it ignores Ctrl-C.

A Ctrl-C in a terminal reaches every process of the search's group. The fork server ignores
SIGINT itself, but only after its preload (torch: seconds); before that, one printed a
KeyboardInterrupt traceback under the search's own clean stop message. Importing this module
first shrinks that window to the interpreter's start. The search stops the server itself
(``einc.runtime.stop``). Ignoring a signal cannot be done in the search before the server's
start instead: a Ctrl-C in that moment could then be lost.

Importing it anywhere but in a fork server does nothing.
"""

import signal
import sys

if "from multiprocessing.forkserver import main" in " ".join(sys.orig_argv):  # how multiprocessing starts it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
