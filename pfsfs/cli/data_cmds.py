"""``pfsfs put``, ``get``, ``cat`` and ``ls``: files in and out of commits."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import click

from ..changes import ChangeSet, split_path
from ..display import json_name, show, show_local, show_path
from ..errors import InvalidInput, NotFound
from ..ids import to_hex
from ..model import DIR, FIFO, FILE, SYMLINK, Entry
from ..refspec import parse_ref
from ..repository import Repository
from ..transfer import (
    SPECIAL_FTYPES,
    PutCache,
    export_file,
    export_special,
    export_tree,
    head_lookup,
    ingest_plan,
    ingest_stream,
    plan_put,
    special_kind,
)
from .common import (
    NO_CHANGES,
    UTF8_TEXT,
    AppContext,
    emit_json,
    human_bytes,
    human_time,
    json_option,
    pass_app,
    plural,
    progress_bar,
)
from .completion import complete_ref


def writable_branch(repository: Repository, repo: str, branch: str) -> None:
    """Refuse writes to pipeline output repos; create the branch on first write (at the
    default branch's head, like ``branch create``), saying so on stderr."""
    repository.check_writable(repo)  # early, before any data is read
    if branch not in repository.list_branches(repo):
        start = repository.start_branch(repo, branch)
        click.echo(f"created branch {repo}@{branch} from {start}", err=True)


def _is_contents(source: str) -> bool:
    """rsync's convention: ``dir/`` means the directory's contents, ``dir`` the directory."""
    return source.endswith("/") and source.rstrip("/") != ""


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
    spec = parse_ref(target)
    if spec.back:
        raise InvalidInput(f"{target}: can only put to a branch head")
    repository = app.repo
    repo, branch = spec.repo, spec.ref or "master"
    if branch not in repository.list_branches(repo):
        repository.repo_record(repo)
        if len(branch) >= 6 and all(c in "0123456789abcdef" for c in branch):
            try:
                repository.resolve(spec)
                raise InvalidInput(f"{target}: can only put to a branch, not a commit")
            except NotFound:
                pass
    contents = False
    if source == "-":
        if spec.path is None or spec.path.endswith("/"):
            raise InvalidInput("with -f -, give the destination path: repo@branch:/path/to/file")
        dest = split_path(spec.path)
    else:
        src = Path(source)
        if not src.exists() and not src.is_symlink():
            raise NotFound(f"{show_local(source)} does not exist")
        contents = _is_contents(source) and src.is_dir()
        base = os.fsencode(src.resolve().name if source in (".", "./") else src.name)
        if contents:
            dest = split_path(spec.path or "/")
        elif spec.path is None:
            dest = (base,)
        elif spec.path.endswith("/"):
            dest = split_path(spec.path) + (base,)
        else:
            dest = split_path(spec.path)
    if not dest and not contents:
        raise InvalidInput(
            "cannot put onto the root itself; name a path inside the repo "
            "(or put a directory's contents there: -f DIR/ -r)"
        )
    writable_branch(repository, repo, branch)
    changes = ChangeSet()
    cache = None
    with repository.writer() as writer:
        chunker = repository.chunker()
        if source == "-":
            entry = ingest_stream(sys.stdin.buffer, writer, chunker)
            changes.put(dest, entry)
            count = 1
        else:
            head = head_lookup(repository, repo, branch)
            cache = PutCache(repository.index, repo, branch, head, read=not no_cache)
            plan = plan_put(
                Path(source), dest, recursive=recursive, cache=cache, contents=contents
            )
            with progress_bar(plan.read_bytes, "put") as update:
                count = ingest_plan(plan, changes, writer, chunker, update)
        shown = show_path(dest) + ("/" if contents and dest else "")
        commit_id = repository.commit(
            repo, branch, changes, message or f"put {shown}", writer=writer, rebase=True
        )
    if cache is not None:
        cache.save()  # only now: the content it names is in the branch
    if commit_id is None:
        click.echo(f"{NO_CHANGES} ({repo}@{branch}:{shown} already holds this)", err=True)
        return
    click.echo(f"{to_hex(commit_id)}  ({plural(count, 'file')} -> {repo}@{branch}:{shown})")


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
    repository = app.repo
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
            export_file(_counting(repository, entry, update), entry, out, into_special=True)
    else:
        export_special(entry, out, replace_any=False)


def _counting(repository: Repository, entry: Entry, update):  # type: ignore[no-untyped-def]
    for data in repository.iter_file(entry):
        update(len(data))
        yield data


def _to_stdout(repository: Repository, entry: Entry) -> None:
    out = sys.stdout.buffer
    for data in repository.iter_file(entry):
        out.write(data)
    out.flush()


def _shown(path: tuple[bytes, ...]) -> str:
    return show_path(path)


@click.command()
@click.argument("ref", metavar="REPO@REF:/PATH", shell_complete=complete_ref)
@pass_app
def cat(app: AppContext, ref: str) -> None:
    """Print a file of a commit."""
    entry, where, path = _resolve_entry(app.repo, ref)
    if entry.is_dir:
        raise InvalidInput(f"{where}:{_shown(path)} is a directory")
    if entry.type != FILE:
        raise InvalidInput(f"{where}:{_shown(path)} is not a regular file")
    _to_stdout(app.repo, entry)


def _mode_string(entry: Entry) -> str:
    kind = {DIR: stat.S_IFDIR, FILE: stat.S_IFREG, SYMLINK: stat.S_IFLNK, FIFO: stat.S_IFIFO}
    special = SPECIAL_FTYPES.get(special_kind(entry))
    return stat.filemode((special or kind.get(entry.type, 0)) | entry.mode)


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
    kind = special_kind(e)
    if kind != e.type:
        item["ftype"] = kind
        rdev = (e.extra or {}).get("rdev")
        if isinstance(rdev, int):
            item["rdev"] = [os.major(rdev), os.minor(rdev)]
    return item


COMMANDS = [put, get, cat, ls]
