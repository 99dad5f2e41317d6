"""``pfsfsd [--home H] [-v] [run|status|stop]``: run the daemon in the foreground (default),
or ask a running one for its status or to stop."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from pfsfs.daemon_client import DaemonClient
from pfsfs.errors import PfsError
from pfsfs.home import default_home

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pfsfsd", description=__doc__)
    parser.add_argument("--home", help="pfsfs home (default: $PFSFS_HOME or ~/.local/share/pfsfs)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("command", nargs="?", default="run", choices=("run", "status", "stop"))
    args = parser.parse_args(argv)
    home = Path(args.home).expanduser().absolute() if args.home else default_home().absolute()
    try:
        if args.command == "run":
            run(home, args.verbose)
        elif args.command == "status":
            print(json.dumps(DaemonClient(home).request("status", timeout=10), indent=2))
        else:
            stop(home)
    except PfsError as exc:
        print(f"pfsfsd: error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)


def run(home: Path, verbose: int = 0) -> None:
    import trio

    from .server import Daemon

    logging.basicConfig(
        level=logging.INFO - 10 * min(verbose, 1),
        format="%(asctime)s pfsfsd %(levelname)s %(name)s: %(message)s",
    )
    trio.run(Daemon(home, verbose).main)


def stop(home: Path, timeout: float = 180.0) -> bool:
    """Ask the daemon to stop; returns once it is gone (False if none was running)."""
    client = DaemonClient(home)
    if client.ping() is None:
        return False
    client.request("stop", timeout=10)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and client.ping() is not None:
        time.sleep(0.05)
    return True


if __name__ == "__main__":
    main()
