"""``pfsfs put``, ``get``, ``cat`` and ``ls``: files in and out of commits."""

from __future__ import annotations

import os
import stat
import sys

import click

from ..display import json_name, show, show_local, show_path
from ..errors import InvalidInput
from ..ids import to_hex
from ..model import FILE, SYMLINK, Entry, Kind
from ..ops.put import parse_target, resolve_target
from ..ops.put import put as ops_put
from ..refspec import parse_ref
from ..repository import Repository
from ..transfer import (
    export_committed_file,
    export_special,
    export_tree,
    file_chunks,
    tune_malloc,
)
from .common import (
    NO_CHANGES,
    UTF8_TEXT,
    AppContext,
    ReaderGone,
    emit_json,
    human_bytes,
    human_time,
    json_option,
    pass_app,
    plural,
    progress_bar,
)
from .completion import complete_ref


@click.command()
@click.argument("target", metavar="REPO@BRANCH[:/PATH]", shell_complete=complete_ref)
@click.option(
    "-f",
    "--file",
    "source",
    required=True,
    help="File, directory, or - for stdin. DIR/ (trailing slash) puts DIR's contents, as rsync.",
)
@click.option("-r", "--recursive", is_flag=True, help="Put a directory and everything in it.")
@click.option("-m", "--message", type=UTF8_TEXT, default=None, help="Commit message.")
@click.option(
    "--no-cache",
    is_flag=True,
    help="Read every file, even those whose size, mtime, ctime and inode are unchanged.",
)
@pass_app
def put(
    app: AppContext,
    target: str,
    source: str,
    recursive: bool,
    message: str | None,
    no_cache: bool,
) -> None:
    """Add or replace files on a branch: one commit per call (none if nothing changed).

    -f DIR -r puts the directory itself (at PATH, or into it when PATH ends in /); -f DIR/ -r
    puts what DIR holds into the directory PATH (default: the root), keeping what is there.
    Files unchanged since a put of them to this branch (same size, mtime, ctime, inode,
    device; the branch still holding what they were) are not read again; --no-cache reads
    them anyway.
    """
    parse_target(target)  # before the home is opened: a malformed target creates none
    repository = app.repo
    where = resolve_target(repository, target, source)
    result = ops_put(
        repository,
        where,
        recursive=recursive,
        message=message,
        use_cache=not no_cache,
        stdin=sys.stdin.buffer,
        progress=lambda total: progress_bar(total, "put"),
        on_branch_created=lambda start: click.echo(
            f"created branch {where.repo}@{where.branch} from {start}", err=True
        ),
    )
    shown = f"{where.repo}@{where.branch}:{where.shown}"
    if result.commit_id is None:
        click.echo(f"{NO_CHANGES} ({shown} already holds this)", err=True)
        return
    click.echo(f"{to_hex(result.commit_id)}  ({plural(result.count, 'file')} -> {shown})")


def _resolve_entry(repository: Repository, ref: str) -> tuple[Entry, str, tuple[bytes, ...]]:
    resolved = repository.resolve(ref)
    root = repository.root_of(resolved.commit)
    entry = repository.lookup(root, resolved.path, f"{resolved.describe()}:")
    return entry, resolved.describe(), resolved.path


@click.command()
@click.argument("ref", metavar="REPO@REF:/PATH", shell_complete=complete_ref)
@click.option("-o", "--output", type=click.Path(), help="Write here instead of stdout.")
@pass_app
def get(app: AppContext, ref: str, output: str | None) -> None:
    """Copy a file (to stdout or -o) or a directory (recursively, to -o) out of a commit.

    A directory comes back with its hard links, symlinks, FIFOs, sockets, xattrs, modes and
    mtimes; device files where the caller may create them (one warning line for each other
    one). An existing device or FIFO given as -o (``/dev/stdout``, a tape) is written into;
    an existing regular file is replaced atomically.
    """
    repository = _copying_out(app.repo)
    entry, where, path = _resolve_entry(repository, ref)
    name = path[-1] if path else os.fsencode(parse_ref(ref).repo)
    if entry.is_dir:
        out = os.fsencode(output) if output else name
        if os.path.exists(out) and not os.path.isdir(out):
            raise InvalidInput(f"{show_local(out)} exists and is not a directory")
        with progress_bar(entry.size, "get") as update:
            stats = export_tree(repository, entry, out, update)
        note = f" ({plural(stats.skipped, 'device file')} not created)" if stats.skipped else ""
        written = plural(stats.files, "file")
        click.echo(f"{written} written to {show_local(out)}{note}", err=True)
        return
    if output is None:
        if entry.type != FILE:
            raise InvalidInput(f"{where}:{_shown(path)} is not a regular file")
        _to_stdout(repository, entry)
        return
    out = os.fsencode(output)
    if os.path.isdir(out) and not os.path.islink(out):
        out = os.path.join(out, name)
    if entry.type == FILE:
        with progress_bar(entry.size, "get") as update:
            export_committed_file(repository, entry, out, update, into_special=True)
    else:
        export_special(entry, out, replace_any=False)


def _copying_out(repository: Repository) -> Repository:
    """``repository`` for a ``get`` or ``cat``: the file content they fetch from a remote
    store is not kept in the read cache (``CachingStore.keep_file_data``), as it is written
    to a file or pipe anyway; trees and manifests still are. And this process keeps its freed
    chunk buffers for the next chunks (``tune_malloc``), as a ``put`` does."""
    if repository.cache is not None:
        repository.cache.keep_file_data = False
    tune_malloc()
    return repository


def _to_stdout(repository: Repository, entry: Entry) -> None:
    out = sys.stdout.buffer
    try:
        with file_chunks(repository, entry) as chunks:
            for data in chunks:
                out.write(data)
        out.flush()
    except BrokenPipeError:  # (only the writes can raise it) the reader went away
        raise ReaderGone() from None


def _shown(path: tuple[bytes, ...]) -> str:
    return show_path(path)


@click.command()
@click.argument("ref", metavar="REPO@REF:/PATH", shell_complete=complete_ref)
@pass_app
def cat(app: AppContext, ref: str) -> None:
    """Print a file of a commit."""
    repository = _copying_out(app.repo)
    entry, where, path = _resolve_entry(repository, ref)
    if entry.is_dir:
        raise InvalidInput(f"{where}:{_shown(path)} is a directory")
    if entry.type != FILE:
        raise InvalidInput(f"{where}:{_shown(path)} is not a regular file")
    _to_stdout(repository, entry)


def _mode_string(entry: Entry) -> str:
    return stat.filemode(entry.kind.mode_bits | entry.mode)


@click.command()
@click.argument("ref", metavar="REPO@REF[:/PATH]", shell_complete=complete_ref)
@click.option("-l", "long", is_flag=True, help="Mode, size, mtime.")
@click.option("-R", "recursive", is_flag=True, help="List subdirectories too.")
@json_option
@pass_app
def ls(app: AppContext, ref: str, long: bool, recursive: bool, as_json: bool) -> None:
    """List a directory of a commit."""
    repository = app.repo
    entry, _, path = _resolve_entry(repository, ref)
    prefix = b"/".join(path)
    prefix = b"/" + prefix if prefix else b""
    if entry.is_dir:
        if recursive:
            items = list(repository.walk(entry, prefix))
        else:
            items = [(prefix + b"/" + n, e) for n, e in sorted(repository.list_dir(entry).items())]
    else:
        items = [(prefix, entry)]
    if as_json:
        emit_json([_json_item(p, e) for p, e in items])
        return
    for p, e in items:
        shown = show(p if recursive else os.path.basename(p))
        if e.is_dir:
            shown += "/"
        if e.type == SYMLINK:
            shown += " -> " + show(e.target)
        if long:
            click.echo(
                f"{_mode_string(e)} {human_bytes(e.size):>10}  {human_time(e.mtime_ns)}  {shown}"
            )
        else:
            click.echo(shown)


def _json_item(path: bytes, e: Entry) -> dict[str, object]:
    """One ``ls --json`` row; names that are not UTF-8 come with exact bytes in ``*_b64``."""
    item: dict[str, object] = {
        **json_name(path, "path"),
        "type": e.type,
        "mode": oct(e.mode),
        "size": e.size,
        "mtime_ns": e.mtime_ns,
    }
    if e.target:
        item.update(json_name(e.target, "target"))
    kind = e.kind
    if kind != e.type:
        item["ftype"] = kind
        if kind in (Kind.CHAR, Kind.BLOCK):
            item["rdev"] = [os.major(e.rdev), os.minor(e.rdev)]
    return item


COMMANDS = [put, get, cat, ls]
