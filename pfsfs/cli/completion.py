"""Shell completion: ``pfsfs completion bash|zsh|fish`` and completing refs.

The script is click's own (it calls ``pfsfs`` back with ``_PFSFS_COMPLETE=<shell>_complete``);
``complete_ref`` is the ``shell_complete`` of every REF argument: repo names, ``repo@branch``
and ``repo@REF:/path`` below a commit. It runs on every Tab, so it reads only this machine's
home (a local store's refs and trees; nothing from an S3 bucket, which could take seconds) and
never raises: a half-typed or wrong ref completes to nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

log = logging.getLogger(__name__)

SHELLS = ("bash", "zsh", "fish")
PROG = "pfsfs"
COMPLETE_VAR = "_PFSFS_COMPLETE"
MAX_ITEMS = 200  # a directory of 100,000 files must not flood the shell


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL; e.g. in ~/.bashrc: eval "$(pfsfs completion bash)".

    Completes commands, options, repo names, repo@branch and repo@REF:/path.
    """
    cls = get_completion_class(shell)
    assert cls is not None  # every choice is a shell click knows
    click.echo(cls(ctx.find_root().command, {}, PROG, COMPLETE_VAR).source())


def complete_ref(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Completions of a half-typed ref; nothing (never an error) when it cannot tell."""
    try:
        return _complete(_home(ctx), incomplete)[:MAX_ITEMS]
    except Exception as exc:  # noqa: BLE001 - completion must never break the shell
        log.debug("completing %r: %s", incomplete, exc)
        return []


def complete_repo(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Repo names (``branch list REPO``, ``repo delete NAME``)."""
    items = complete_ref(ctx, param, incomplete.partition("@")[0])
    names = dict.fromkeys(i.value.partition("@")[0] for i in items)
    return [CompletionItem(n) for n in names]


def complete_ref_or_dir(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """``mount [REF] DIR``: a ref while it is the first word, a directory after it."""
    if ctx.params.get(param.name or ""):  # the REF is already there: DIR now
        return [CompletionItem(incomplete, type="dir")]
    return complete_ref(ctx, param, incomplete)


def _home(ctx: click.Context) -> Path:
    from ..home import default_home

    home = ctx.find_root().params.get("home") or os.environ.get("PFSFS_HOME")
    return Path(home).expanduser() if home else default_home()


def _complete(home: Path, incomplete: str) -> list[CompletionItem]:
    from ..home import read_config
    from ..repository import Repository

    config = read_config(home)
    if config is None or config.store.get("type") != "local":
        return []  # no home yet, or refs that live in a bucket: too slow for a Tab
    with Repository.open(home, create=False) as repo:
        if ":" in incomplete:
            return _paths(repo, incomplete)
        name, at, branch = incomplete.partition("@")
        if not at:
            found = []
            for info in repo.list_repos():
                if info.name.startswith(name):
                    found.extend(f"{info.name}@{b}" for b in sorted(info.branches))
            return [CompletionItem(v, type="plain") for v in found]
        return [
            CompletionItem(f"{name}@{b}")
            for b in sorted(repo.list_branches(name))
            if b.startswith(branch)
        ]


def _paths(repo: Any, incomplete: str) -> list[CompletionItem]:
    """``repo@ref:/dir/na`` -> the names in ``/dir`` of that commit starting with ``na``."""
    ref, _, path = incomplete.partition(":")
    directory, _, start = path.rpartition("/")
    resolved = repo.resolve(f"{ref}:{directory or '/'}")
    entry = repo.lookup(repo.root_of(resolved.commit), resolved.path)
    if not entry.is_dir:
        return []
    prefix = f"{ref}:{directory}/"
    items = []
    for raw, child in sorted(repo.list_dir(entry).items()):
        name = os.fsdecode(raw)
        if name.startswith(start):
            items.append(CompletionItem(prefix + name + ("/" if child.is_dir else "")))
    return items


COMMANDS = [completion]
