"""Shared CLI plumbing: the repository context, output helpers, progress bars, errors.

Every command gets the open ``Repository`` from ``ctx.obj`` (opened lazily from ``--home``),
prints JSON with ``--json`` where scripts need it, and lets ``PfsError`` propagate to
``main`` which prints one line and exits with the error's code.

Ctrl-C and SIGTERM: a command unwinds as for any exception (a write session is abandoned, so no
ref moves; a pipeline job is marked cancelled), then ``PfsGroup`` turns the interrupt into
``Interrupted`` and ``main`` prints one line and exits 128 + the signal number.
"""

from __future__ import annotations

import importlib
import json
import math
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..display import plural as plural  # re-exported: the commands count with it
from ..errors import StoreError
from ..refspec import short_repr
from ..repository import Repository


class AppContext:
    """What ``ctx.obj`` holds: the home path and a lazily opened repository."""

    def __init__(self, home: str | None) -> None:
        self.home = home
        self._repo: Repository | None = None

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            self._repo = Repository.open(self.home_path)
        return self._repo

    @property
    def home_path(self) -> Path:
        from ..home import check_path, default_home

        return check_path(Path(self.home).expanduser() if self.home else default_home(), "home")

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None


pass_app = click.make_pass_decorator(AppContext)


class Interrupted(BaseException):
    """The command was stopped by a signal after it had unwound; ``main`` exits 128 + signum.

    A BaseException (like KeyboardInterrupt) so no ``except Exception`` on the way up takes it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def message(self) -> str:
        if self.signum == signal.SIGINT:
            return "interrupted"
        return f"stopped by {signal.Signals(self.signum).name}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []  # the signal behind the next KeyboardInterrupt, if not SIGINT


def _on_terminate(signum: int, frame: object) -> None:
    """SIGTERM/SIGHUP unwind the command exactly like Ctrl-C does: delivered as SIGINT when a
    Python SIGINT handler is in place (trio's, inside ``trio.run``, defers it to a safe point),
    else raised here."""
    _received.append(signum)
    if callable(signal.getsignal(signal.SIGINT)):
        signal.raise_signal(signal.SIGINT)
    else:
        raise KeyboardInterrupt


class ReaderGone(BaseException):
    """The reader of standard output went away (``pfsfs cat big | head``): ``main`` exits 0.

    What a ``BrokenPipeError`` of a command becomes in ``PfsGroup.invoke``: click would turn
    the error itself into a silent exit 1 before ``main`` saw it."""


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP stop a command the way Ctrl-C does (see ``_on_terminate``)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _on_terminate)


def is_interrupt(exc: BaseException) -> bool:
    """KeyboardInterrupt itself, or one grouped by trio nurseries (``pfsfs pipeline run``)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(KeyboardInterrupt)[0] is not None
    return isinstance(exc, KeyboardInterrupt)


def interrupted() -> Interrupted:
    """The ``Interrupted`` for the KeyboardInterrupt being handled."""
    return Interrupted(_received[0] if _received else signal.SIGINT)


class PfsGroup(click.Group):
    """The ``pfsfs`` group: an interrupt that unwound a command becomes ``Interrupted`` here,
    before click would print a blank line and turn it into a generic "Aborted!".

    Its commands live in modules imported when one of theirs runs (``lazy``: command name ->
    module, each with a ``COMMANDS`` list), not all at start: importing every command module
    was a fifth of each command's start-up (``pfsfs --version`` 87 -> 69 ms; Python alone 17).
    A module that is not installed (an optional layer) leaves its commands out. Listings
    (``--help``, completion of command names) import them all."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_all()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.lazy.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            self._load(module)
        if cmd_name not in self.commands and self.lazy:
            self.load_all()  # a name the table lacks (or a typo: click then says so)
        return super().get_command(ctx, cmd_name)

    def load_all(self) -> None:
        """Import every command module (what ``commands`` holds is then complete)."""
        for module in sorted(set(self.lazy.values())):
            self._load(module)

    def _load(self, module_name: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            module = None
        for name in [n for n, m in self.lazy.items() if m == module_name]:
            del self.lazy[name]
        for command in getattr(module, "COMMANDS", ()):
            self.add_command(command)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaseException as exc:
            if is_interrupt(exc):
                raise interrupted() from None
            if isinstance(exc, BrokenPipeError):
                raise broken_pipe(exc) from None
            raise


def broken_pipe(exc: BrokenPipeError) -> BaseException:
    """What a broken pipe means: ``ReaderGone`` (exit 0) when it is standard output's reader
    that went away, else an error with its line (a transform's stdin, a FIFO, a socket)."""
    if stdout_reader_gone():
        return ReaderGone()
    where = f": {exc.filename}" if exc.filename else ""
    return StoreError(f"broken pipe{where}")


def stdout_reader_gone() -> bool:
    """Whether standard output is a pipe or socket whose reader has closed it (``poll``
    reports an error on the writing end then)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no stdout, or one without a descriptor
        return False


NO_CHANGES = "no changes; nothing committed"


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


class Utf8Text(click.ParamType):
    """Free text that is stored as UTF-8 (commit messages, descriptions). Arguments arrive
    decoded with surrogateescape, so bytes that are not UTF-8 show up here, not at commit time
    after a long ingest."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogateescape")
            self.fail(f"{short_repr(raw)} is not valid UTF-8 text", param, ctx)
        return text


class Seconds(click.ParamType):
    """A duration in seconds: a number >= 0 (``inf`` allowed; ``nan`` and negatives are not)."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{short_repr(str(value))} is not a number of seconds", param, ctx)
        if math.isnan(seconds) or seconds < 0:
            self.fail(f"{short_repr(str(value))} is not a number of seconds >= 0", param, ctx)
        return seconds


class Count(click.ParamType):
    """A whole number >= 0 of things to show (``-n``), at most what ``islice`` takes."""

    name = "count"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            count = value
        else:
            text = str(value).strip()
            if not text.isdigit() or not text.isascii():
                self.fail(f"{short_repr(str(value))} is not a whole number >= 0", param, ctx)
            # int() of thousands of digits is refused by Python; anything that long is too big.
            count = int(text) if len(text.lstrip("0")) <= 19 else sys.maxsize + 1
        if count < 0 or count > sys.maxsize:
            shown = short_repr(str(value))
            self.fail(f"{shown} is not a whole number up to {sys.maxsize}", param, ctx)
        return count


UTF8_TEXT = Utf8Text()
SECONDS = Seconds()
COUNT = Count()


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def human_time(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


class Progress:
    """A one-line progress report on stderr: bar, bytes done/total, rate and time left, as
    tqdm shows them; redrawn at most 10 times a second, finished with a newline."""

    WIDTH = 24
    INTERVAL = 0.1

    def __init__(self, total: int, label: str, *, clock: Callable[[], float] = time.monotonic):
        self.total, self.label, self.clock = total, label, clock
        self.done = 0
        self.start = clock()
        self.drawn_at = -math.inf
        self.shown = 0  # characters of the last line, to blank what a shorter one leaves

    def update(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self.drawn_at >= self.INTERVAL:
            self.draw(now)

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        done = min(self.done, self.total)
        fraction = done / self.total if self.total else 1.0
        filled = int(fraction * self.WIDTH)
        rate = self.done / elapsed
        left = (self.total - done) / rate if rate > 0 else math.inf
        return (
            f"{self.label} [{'#' * filled}{'-' * (self.WIDTH - filled)}] {fraction:4.0%}  "
            f"{human_bytes(done)}/{human_bytes(self.total)}  {human_bytes(int(rate))}/s  "
            f"{_clock(left)} left"
        )

    def draw(self, now: float, end: str = "") -> None:
        text = self.line(now)
        sys.stderr.write("\r" + text + " " * max(0, self.shown - len(text)) + end)
        sys.stderr.flush()
        self.shown, self.drawn_at = len(text), now


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


@contextmanager
def progress_to(label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback (bytes) drawing ``Progress`` on stderr, only when
    stderr is a terminal: for work whose total is known only once it starts (gc, fsck)."""
    bars: list[Progress] = []
    if not sys.stderr.isatty():
        yield lambda _d, _t: None
        return

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(Progress(total, label))
        bar = bars[0]
        bar.total = total
        bar.update(done - bar.done)

    try:
        yield update
    finally:
        if bars:
            bars[0].draw(bars[0].clock(), end="\n")


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Progress of ``total`` bytes on stderr (``Progress``), only when stderr is a terminal."""
    if not sys.stderr.isatty() or total <= 0:
        yield lambda _n: None
        return
    bar = Progress(total, label)
    try:
        yield bar.update
    finally:
        bar.draw(bar.clock(), end="\n")
