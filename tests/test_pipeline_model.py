"""The pipeline path against a reference directory: what a transform writes to ``/pfs/out`` is
what its output commit holds.

A seeded generator (``GENERATOR``, a python3 script given as the transform's cmd) writes a random
tree: files of random sizes (empty, small, several MiB), sparse files, nested directories,
symlinks (relative, absolute, dangling), hard links, modes, files overwritten with shorter
content (``open(..., "w")``, shell ``>``, truncate), appends, atomic replaces, empty directories,
directory modes, and mtimes (of files, symlinks and directories) set explicitly with
``os.utime`` (ns) and ``touch -d``. The transform runs with the local runner in bubblewrap (the
daemon's scheduler runs the job); the same script runs in a plain local directory; the output
commit, read back with ``pfsfs get`` and mounted read-only, must equal it: content, type, mode
(directories' too), size, symlink targets, every directory (empty ones too), and the mtimes the
script set (symlinks' through the mount, since ``pfsfs get`` does not restore those yet).

Not compared: hard links (``/pfs/out`` is ingested as copies), and the mtimes the script did not
set (a directory's changes whenever an entry is added, so only explicit ones are deterministic).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .fusehelpers import Env, env, force_unmount, no_leftovers
from .mountmodel import Tree, compare, got_tree, only
from .pipeline_fixtures import ensure_bwrap

__all__ = ["env", "no_leftovers"]

SEEDS = [11, 12, 20]  # each makes every kind of entry, hard links, sparse and big files

# argv: SEED OUT [MANIFEST]. Writes the tree under OUT; with MANIFEST, also writes there the
# paths (relative to OUT) whose mtime it set explicitly, last thing for each.
GENERATOR = r"""
import json, os, random, subprocess, sys

seed, out = int(sys.argv[1]), sys.argv[2]
rng = random.Random(seed)
dirs, files, links, explicit, modes = [""], [], [], {}, {}


def full(rel):
    return os.path.join(out, rel)


def size():
    r = rng.random()
    if r < 0.12:
        return 0
    if r < 0.6:
        return rng.randint(1, 300)
    if r < 0.9:
        return rng.randint(300, 100_000)
    return rng.randint(1 << 20, (3 << 20) + 12345)  # several chunks


def new_name(prefix):
    d = rng.choice(dirs)
    name = f"{prefix}{len(files) + len(links) + len(dirs)}"
    return os.path.join(d, name) if d else name


def write(rel, data, how="wb"):
    with open(full(rel), how) as f:
        f.write(data)


for step in range(rng.randint(40, 70)):
    op = rng.choices(
        ["dir", "file", "sparse", "shorter", "shell", "truncate", "append", "replace",
         "symlink", "hardlink", "chmod"],
        [8, 20, 4, 8, 4, 4, 4, 3, 5, 2, 6],
    )[0]
    if op == "dir":
        rel = new_name("d")
        os.makedirs(full(rel))
        dirs.append(rel)
        rel = os.path.join(rel, "in-dir")  # every directory holds a file
        write(rel, rng.randbytes(size()))
        files.append(rel)
    elif op == "file" or not files:
        rel = new_name("f")
        write(rel, rng.randbytes(size()))
        files.append(rel)
    elif op == "sparse":
        rel = new_name("s")
        with open(full(rel), "wb") as f:
            f.write(b"head")
            f.seek(rng.choice([4096, 1 << 20, 5 << 20]) + rng.randint(0, 999))
            f.write(rng.randbytes(rng.randint(1, 100)))
        if rng.random() < 0.5:
            os.truncate(full(rel), os.path.getsize(full(rel)) + rng.randint(1, 3 << 20))
        files.append(rel)
    elif op == "shorter":  # overwrite a file with shorter content, as open(p, "w") does
        rel = rng.choice(files)
        old = os.path.getsize(full(rel))
        write(rel, rng.randbytes(rng.randint(0, max(0, old - 1))))
    elif op == "shell":  # shell `>` redirection over an existing file
        rel = rng.choice(files)
        subprocess.run(["sh", "-c", 'printf "%s\n" "$1" > "$2"', "sh", f"line {step}",
                        full(rel)], check=True)
    elif op == "truncate":
        rel = rng.choice(files)
        os.truncate(full(rel), os.path.getsize(full(rel)) // rng.choice([2, 3, 10**9]))
    elif op == "append":
        write(rng.choice(files), rng.randbytes(rng.randint(1, 5000)), "ab")
    elif op == "replace":  # write a temp file, rename it over the target
        rel = rng.choice(files)
        write(rel + ".tmp", rng.randbytes(size()))
        os.replace(full(rel + ".tmp"), full(rel))
    elif op == "symlink":
        rel = new_name("l")
        target = rng.choice([rng.choice(files), "../x", "/etc/hostname", "dangling", "a/b/c"])
        os.symlink(target, full(rel))
        links.append(rel)
    elif op == "hardlink":
        rel = new_name("h")
        os.link(full(rng.choice(files)), full(rel))
        files.append(rel)
    elif op == "chmod":  # applied at the end: the sandbox's uid may not write a 0444 file
        modes[rng.choice(files)] = rng.choice([0o644, 0o600, 0o755, 0o700, 0o444, 0o640])

# directories: a stream of their own, so the one above (and what it makes) stays as it was
drng = random.Random(seed * 1000 + 7)
for i in range(drng.randint(2, 4)):  # empty directories, some nested in another
    rel = os.path.join(drng.choice(dirs), f"e{i}")
    os.makedirs(full(rel))
    dirs.append(rel)
    if drng.random() < 0.5:
        dirs.append(os.path.join(rel, "deeper"))
        os.mkdir(full(dirs[-1]))
dir_modes = {d: drng.choice([0o700, 0o750, 0o711, 0o775]) for d in dirs[1:] if drng.random() < 0.5}
for rel, mode in modes.items():
    os.chmod(full(rel), mode)
for rel, mode in dir_modes.items():
    os.chmod(full(rel), mode)
# mtimes last (anything written after would move them); hard-linked names share one inode, so
# the last one set wins for all of them
for rel in files + links:
    if rng.random() < 0.6:
        ns = rng.randint(0, 2_000_000_000) * 10**9 + rng.randint(0, 10**9 - 1)
        if rng.random() < 0.5:
            os.utime(full(rel), ns=(ns, ns), follow_symlinks=False)
        else:
            ns -= ns % 10**9  # touch -d @SECONDS
            subprocess.run(["touch", "-h", "-d", f"@{ns // 10**9}", full(rel)], check=True)
        st = os.lstat(full(rel))
        for other in files + links:
            if os.lstat(full(other)).st_ino == st.st_ino:
                explicit[other] = True
for rel in dirs[1:]:  # after every write below them (a write moves a directory's mtime)
    if drng.random() < 0.5:
        ns = drng.randint(0, 2_000_000_000) * 10**9 + drng.randint(0, 10**9 - 1)
        os.utime(full(rel), ns=(ns, ns))
        explicit[rel] = True
if len(sys.argv) > 3:
    with open(sys.argv[3], "w") as f:
        json.dump(sorted(explicit), f)
"""


@pytest.fixture(scope="module", autouse=True)
def bwrap() -> str:
    return ensure_bwrap()


def _host_python() -> str:
    """The python3 the sandbox runs (its ``/usr``), so both sides draw the same numbers."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _reference(env: Env, seed: int) -> tuple[Tree, list[bytes]]:
    ref = env.mkdir(f"reference-{seed}")
    manifest = env.root / f"explicit-{seed}.json"
    subprocess.run([_host_python(), "-c", GENERATOR, str(seed), str(ref), str(manifest)],
                   check=True, timeout=120)
    return Tree(ref), [os.fsencode(p) for p in json.loads(manifest.read_text())]


def _run_pipeline(env: Env, name: str, cmd: list[str]) -> str:
    """A one-datum pipeline ``name`` running ``cmd`` (local runner, bubblewrap) over repo
    ``data``; the daemon's scheduler runs it. Returns ``name@master``."""
    env.run("repo", "create", "data")
    env.run("put", "data@master:/input", "-f", "-", input=b"trigger\n")
    spec = {
        "pipeline": {"name": name},
        "input": {"pfs": {"repo": "data", "glob": "/"}},
        "transform": {"cmd": cmd},
        "runner": "local",
    }
    path = env.root / f"{name}.json"
    path.write_text(json.dumps(spec))
    env.run("pipeline", "create", "-f", str(path))
    env.run("wait", "data@master", "--timeout", "300")
    assert env.head(f"{name}@master"), env.out("job", "list")
    return f"{name}@master"


def _mtimes(tree: Tree, paths: list[bytes]) -> dict[bytes, int]:
    return {p: tree.items[p].mtime_ns for p in paths}


@pytest.mark.parametrize("seed", SEEDS)
def test_output_commit_is_what_the_transform_wrote(env: Env, seed: int) -> None:
    reference, explicit = _reference(env, seed)
    kinds = {it.kind for it in reference.items.values()}
    assert kinds == {"f", "d", "l"} and len(reference.link_groups()) > 0, kinds
    assert any(it.size > 1 << 20 for it in reference.items.values())
    assert any(it.size == 0 for it in reference.items.values() if it.kind == "f")
    assert any(p.rsplit(b"/", 1)[-1].startswith(b"s") for p in reference.paths("f"))  # sparse
    dirs = reference.paths("d")
    assert any(not any(q.startswith(d + b"/") for q in reference.items) for d in dirs)  # empty
    assert len({reference.items[d].mode for d in dirs}) > 1
    ref = _run_pipeline(env, "gen", ["python3", "-c", GENERATOR, str(seed), "/pfs/out"])

    got = got_tree(env, ref)
    compare(only(reference, "fld"), only(got, "fld"), f"`pfsfs get` of {ref}", mtime=False,
            xattrs=False, links=False)
    kept = [p for p in explicit if reference.items[p].kind in "fd"]
    assert any(reference.items[p].kind == "d" for p in kept)
    assert _mtimes(got, kept) == _mtimes(reference, kept)

    mp = env.mount(ref, "out-mnt", "--read-only")
    try:
        mounted = Tree(mp)
    finally:
        force_unmount(mp)
    compare(only(reference, "fld"), only(mounted, "fld"), f"{ref} mounted read-only",
            mtime=False, xattrs=False, links=False)
    assert _mtimes(mounted, explicit) == _mtimes(reference, explicit)


def test_output_directories_are_committed_as_written(env: Env) -> None:
    script = (
        "import os\n"
        "os.makedirs('/pfs/out/private/empty')\n"
        "open('/pfs/out/private/f', 'w').write('x')\n"
        "os.chmod('/pfs/out/private', 0o700)\n"
        "os.utime('/pfs/out/private', ns=(1_500_000_000_123_456_789,) * 2)\n"
    )
    ref = _run_pipeline(env, "dirs", ["python3", "-c", script])
    got = got_tree(env, ref)
    assert set(got.paths("d")) == {b"private", b"private/empty"}
    private = got.items[b"private"]
    assert (private.mode, private.mtime_ns) == (0o700, 1_500_000_000_123_456_789)
    # an empty directory is an output of the datum that made it, as a file is
    why = env.out("why", f"{ref}:/private/empty")
    assert "made by pipeline dirs" in why and "\n  datum " in why, why
