"""The one error hierarchy of pfsfs.

Every failure a user can reach is a `PfsError` with a one-line message and an exit code; the CLI
prints the message (no traceback) and exits with the code. Lower layers raise the most specific
subclass; only the FUSE layer maps these to errno values.
"""

from __future__ import annotations


class PfsError(Exception):
    """A failure with a message meant for a person and a process exit code."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(PfsError):
    """Malformed user input: a bad ref, name, path, option or spec."""

    exit_code = 2


class NotFound(PfsError):
    """A repo, branch, commit, path or object that does not exist."""

    exit_code = 3


class AlreadyExists(PfsError):
    """Creating something that is already there."""

    exit_code = 4


class Conflict(PfsError):
    """A race or merge conflict: the branch moved, or both sides changed a path."""

    exit_code = 5

    def __init__(self, message: str, paths: list[str] | None = None) -> None:
        super().__init__(message)
        self.paths = paths or []


class BranchMoved(Conflict):
    """A compare-and-swap on a ref lost: someone else moved the branch first."""


class RefChanged(Conflict):
    """Store-level CAS failure: the ref's current value is not the expected one."""


class Corruption(PfsError):
    """Stored data does not match its content hash, or is unreadable."""

    exit_code = 6


class StoreError(PfsError):
    """The object store failed (I/O, disk full, network, credentials)."""

    exit_code = 7


class StoreFull(StoreError):
    """No space left where objects or staged data are written."""


class ReadOnly(PfsError):
    """Writing to something that is read-only (an old commit, an output repo)."""

    exit_code = 8


class DaemonError(PfsError):
    """The mount daemon is not reachable or refused a request."""

    exit_code = 9


class Busy(PfsError):
    """A mount cannot be unmounted: files are open in it or a process works inside it."""

    exit_code = 10


class IndexDamaged(Corruption):
    """The home's LMDB index (a rebuildable cache plus this machine's own records) cannot be
    read: a damaged page, a file that is not LMDB. ``pfsfs fsck --rebuild-index`` repairs it."""
