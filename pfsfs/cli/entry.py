"""The ``pfsfs`` console script: a signal is one line and 128 + its number from the start.

Importing the command modules takes a while (much longer on a loaded machine); a Ctrl-C in that
time printed a KeyboardInterrupt traceback and a SIGTERM killed the process without a word. So
the handlers below are set before those imports; once ``main`` runs, it installs the ones that
let a running command unwind cleanly (``common.install_signal_handlers``).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

_EARLY = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _before_start(signum: int, _frame: FrameType | None) -> None:
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    os.write(2, f"pfsfs: {what}\n".encode())
    os._exit(128 + signum)  # nothing has started that would need unwinding


def main() -> None:
    previous = {s: signal.signal(s, _before_start) for s in _EARLY}
    from .main import main as run_cli  # the slow part (click, the repository; a command's
    # own module is imported later, when click looks the command up)

    for s, handler in previous.items():
        signal.signal(s, handler)
    run_cli()


if __name__ == "__main__":
    sys.exit(main())
