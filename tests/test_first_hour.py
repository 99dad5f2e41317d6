"""Issue 15, the first hour: what a new user tripped over, each checked the way they saw it.

CLI tests run the real ``pfsfs`` in a subprocess against a fresh home; mount tests mount for
real (``env``: a daemon subprocess, unmounted in a finally).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from .cli import fails, run
from .fusehelpers import PFSFS, Env, env, no_leftovers, write

__all__ = ["env", "no_leftovers"]


def out(proc) -> str:  # type: ignore[no-untyped-def]
    return proc.stdout.decode()


def err(proc) -> str:  # type: ignore[no-untyped-def]
    return proc.stderr.decode()


def commits(home: Path, ref: str) -> int:
    lines = out(run(home, "log", ref)).splitlines()
    return len([line for line in lines if "no commits" not in line])


# -- 6. no empty commits ---------------------------------------------------------------------------
def test_put_of_identical_content_makes_no_commit(tmp_path: Path) -> None:
    home, f = tmp_path / "home", tmp_path / "f"
    f.write_text("same")
    run(home, "repo", "create", "r")
    first = out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]
    again = run(home, "put", "r@master:/f", "-f", str(f))
    assert again.returncode == 0 and out(again) == ""
    assert err(again).startswith("no changes; nothing committed"), err(again)
    assert commits(home, "r@master") == 1
    assert out(run(home, "log", "r@master", "-n", "1")).split()[0] == first[:12]
    # A directory put twice, and into a new branch that already holds it: no commit either.
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_text("x")
    run(home, "put", "r@master", "-f", str(d), "-r")
    assert "no changes" in err(run(home, "put", "r@master", "-f", str(d), "-r"))
    assert commits(home, "r@master") == 2
    # A real change still commits.
    f.write_text("other")
    assert len(out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]) == 64


def test_rollback_to_identical_content_makes_no_commit(tmp_path: Path) -> None:
    home, f = tmp_path / "home", tmp_path / "f"
    run(home, "repo", "create", "r")
    f.write_text("1")
    one = out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]
    proc = run(home, "rollback", "r@master", "--to", one[:12])
    assert proc.returncode == 0 and out(proc) == ""
    assert err(proc).startswith("no changes; nothing committed"), err(proc)
    assert commits(home, "r@master") == 1
    f.write_text("2")
    run(home, "put", "r@master:/f", "-f", str(f))
    assert len(out(run(home, "rollback", "r@master", "--to", one[:12])).strip()) == 64
    assert commits(home, "r@master") == 3


def test_library_commit_of_nothing_returns_none_unless_allowed(tmp_path: Path) -> None:
    from pfsfs.changes import ChangeSet
    from pfsfs.repository import Repository

    with Repository.open(tmp_path / "home") as repo:
        repo.create_repo("r")
        assert repo.commit("r", "master", ChangeSet(), "empty") is None  # an empty branch
        cs = ChangeSet()
        cs.delete("/missing")
        assert repo.commit("r", "master", cs, "deletes nothing") is None
        assert repo.branch_head("r", "master") is None
        # Pipelines record provenance even for unchanged output: allowed explicitly.
        made = repo.commit("r", "master", ChangeSet(), "job 1", allow_empty=True)
        assert made is not None and repo.branch_head("r", "master") == made


# -- 7. new branches start at master's head --------------------------------------------------------
def test_branch_create_starts_at_master_and_says_so(tmp_path: Path) -> None:
    home, f = tmp_path / "home", tmp_path / "f"
    run(home, "repo", "create", "r")
    f.write_text("1")
    head = out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]
    assert out(run(home, "branch", "create", "r@b")).strip() == (
        f"created branch r@b from r@master ({head[:12]})"
    )
    assert out(run(home, "cat", "r@b:/f")) == "1"
    f.write_text("2")
    run(home, "put", "r@master:/f", "-f", str(f))
    line = out(run(home, "branch", "create", "r@old", "--from", "master~1")).strip()
    assert line == f"created branch r@old from r@{head[:12]}"
    # put to a new branch creates it the same way (on stderr: stdout stays the commit line).
    proc = run(home, "put", "r@fresh:/g", "-f", str(f))
    assert "created branch r@fresh from r@master" in err(proc)
    assert sorted(out(run(home, "ls", "r@fresh")).split()) == ["f", "g"]


def test_mount_create_new_branch_starts_at_master(env: Env) -> None:
    src = env.mkdir("src")
    write(src / "a.txt", "hello\n")
    env.run("repo", "create", "data")
    env.run("put", "data@master:/a.txt", "-f", str(src / "a.txt"))
    head = env.head("data@master")
    mp = env.mkdir("mnt")
    proc = env.run("mount", "--create", "data@new", str(mp))
    try:
        assert f"created branch data@new from data@master ({head[:12]})" in proc.stdout
        assert f"base {head[:12]}" in proc.stdout
        assert (mp / "a.txt").read_text() == "hello\n"
    finally:
        env.run("unmount", str(mp))
    # --from REF, and a brand-new repo.
    first = env.head("data@master")
    proc = env.run("mount", "--create", "--from", "master", "data@other", str(mp))
    env.run("unmount", str(mp))
    assert f"created branch data@other from data@master ({first[:12]})" in proc.stdout
    proc = env.run("mount", "--create", "fresh@master", str(mp))
    env.run("unmount", str(mp))
    assert "created repo fresh" in proc.stdout and "base empty" in proc.stdout


# -- 8. put DIR/ puts the directory's contents ------------------------------------------------
def test_put_trailing_slash_puts_the_contents(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_text("a")
    (d / "sub" / "b").write_text("b")
    run(home, "repo", "create", "r")
    run(home, "put", "r@master:/", "-f", str(d), "-r")
    assert out(run(home, "ls", "r@master")).split() == ["dir/"]
    proc = run(home, "put", "r@master:/", "-f", f"{d}/", "-r")
    assert "(2 files -> r@master:/)" in out(proc)
    assert out(run(home, "ls", "r@master")).split() == ["a", "dir/", "sub/"]  # merged, as rsync
    assert out(run(home, "cat", "r@master:/sub/b")) == "b"
    run(home, "put", "r@master:/x", "-f", f"{d}/", "-r")
    assert out(run(home, "ls", "r@master:/x")).split() == ["a", "sub/"]
    run(home, "put", "r@master:/y/", "-f", f"{d}/", "-r")
    assert out(run(home, "ls", "r@master:/y")).split() == ["a", "sub/"]
    # Without a path, the contents go to the root (here: nothing new, so no commit).
    assert "no changes" in err(run(home, "put", "r@master", "-f", f"{d}/", "-r"))
    assert "use -r" in fails(home, "put", "r@master:/", "-f", f"{d}/", code=2)


# -- 5. every command and option in README's tables exists --------------------------------------
README = Path(__file__).resolve().parent.parent / "README.md"
WORD = re.compile(r"^[a-z][a-z-]*$")
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][a-zA-Z-]*)")


def _readme_table_commands() -> list[tuple[str, str]]:
    """``(backticked text, its row)`` of every ``pfsfs ...`` in a README table's first column."""
    found = []
    for line in README.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first = re.split(r"(?<!\\)\|", line)[1].replace("\\|", "|")
        found.extend((seg, line) for seg in re.findall(r"`([^`]+)`", first))
    return found


def _resolve(group, words: list[str]):  # type: ignore[no-untyped-def]
    """The deepest command the leading words name below ``group`` (words used, command)."""
    import click

    command, used = group, []
    for w in words:
        if not (isinstance(command, click.Group) and w in command.commands):
            break
        command, used = command.commands[w], [*used, w]
    return used, command


def _lead_words(text: str) -> list[str]:
    words = []
    for token in text.split():
        if not WORD.match(token):
            break
        words.append(token)
    return words


def _readme_claims() -> list[tuple[list[str], list[str], str]]:
    """``(command path, options, row)`` for each command a README table names; an option
    written in brackets is marked optional with a leading "?"."""
    from pfsfs.cli.main import cli

    cli.load_all()  # commands are imported when used: have them all in cli.commands
    claims = []
    parent: list[str] = []
    for seg, row in _readme_table_commands():
        absolute = seg.startswith("pfsfs ")
        if not absolute and not seg.startswith(("pfsfs", *cli.commands)) and not parent:
            continue  # a `-f -` or `master` quoted in a first column
        text = seg[len("pfsfs ") :] if absolute else seg
        for n, part in enumerate(text.split(" / ")):
            words = _lead_words(part)
            bases = [[]] if absolute and n == 0 else [parent, []] if n else [[], parent]
            best: tuple[list[str], list[str]] | None = None
            for base in bases:
                used, _ = _resolve(cli, [*base, *words])
                if len(used) > len(base) and (best is None or len(used) > len(best[0])):
                    best = (used, base)
            assert best is not None, f"README names `pfsfs {part}`, no such command ({row})"
            path = best[0]
            parent = path[:-1] if len(path) > 1 else path
            optional = set(OPTION.findall(" ".join(re.findall(r"\[[^\]]*\]", part))))
            options = [("?" if o in optional else "") + o for o in OPTION.findall(part)]
            claims.append((path, options, row))
            # `daemon [run|status|stop]`: alternatives of subcommands.
            for alts in re.findall(r"\[([a-z|]+)\]", part):
                for sub in alts.split("|"):
                    claims.append(([*path, sub], [], row))
    return claims


def test_every_command_and_option_in_readme_tables_exists(tmp_path: Path) -> None:
    from pfsfs.cli.main import cli

    claims = _readme_claims()
    assert len(claims) > 40  # the tables were read
    helps: dict[tuple[str, ...], str] = {}
    for path, options, row in claims:
        key = tuple(path)
        if key not in helps:
            proc = run(tmp_path / "home", *path, "--help", check=False)
            assert proc.returncode == 0, f"`pfsfs {' '.join(path)} --help` failed ({row})"
            helps[key] = out(proc)
        command = _resolve(cli, path)[1]
        for option in options:
            if option.startswith("?"):  # `[-m MSG]`: the CLI must not demand it
                option = option[1:]
                param = next(p for p in command.params if option in p.opts + p.secondary_opts)
                assert not param.required, f"README: `{option}` is optional; the CLI demands it"
            assert re.search(rf"(?<![\w-]){re.escape(option)}\b", helps[key]), (
                f"README says `pfsfs {' '.join(path)} ... {option}`; its --help has no {option}"
            )


# -- 11. small things ---------------------------------------------------------------------------
def test_fsck_json(tmp_path: Path) -> None:
    home, f = tmp_path / "home", tmp_path / "f"
    f.write_text("x")
    run(home, "repo", "create", "r")
    run(home, "put", "r@master:/f", "-f", str(f))
    assert json.loads(out(run(home, "fsck", "--json"))) == {
        "ok": True,
        "deep": False,
        "problems": [],
    }
    for blob in (home / "store").rglob("*"):
        if blob.is_file() and "pack" in blob.parts:
            blob.unlink()  # a pack with the file's tree and manifest
    proc = run(home, "fsck", "--json", check=False)
    assert proc.returncode == 6
    report = json.loads(out(proc))
    assert report["ok"] is False and report["problems"]
    assert err(proc).strip().splitlines() == [
        f"pfsfs: error: fsck found {len(report['problems'])} problem"
        + ("s" if len(report["problems"]) != 1 else "")
    ]


def test_plurals(tmp_path: Path) -> None:
    home, f = tmp_path / "home", tmp_path / "f"
    f.write_text("x")
    run(home, "repo", "create", "r")
    run(home, "put", "r@master:/f", "-f", str(f))
    assert "history has only 1 commit\n" in err(run(home, "log", "r@master~3", check=False))
    d = tmp_path / "d"
    d.mkdir()
    (d / "one").write_text("1")
    run(home, "put", "r@master", "-f", str(d), "-r")
    proc = run(home, "get", "r@master:/d", "-o", str(tmp_path / "back"))
    assert err(proc).startswith("1 file written to "), err(proc)


def test_output_repos_refuse_branches_and_rollback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    spec = tmp_path / "p.json"
    spec.write_text(
        json.dumps(
            {
                "pipeline": {"name": "p"},
                "input": {"pfs": {"repo": "data", "glob": "/*"}},
                "transform": {"cmd": ["true"]},
                "runner": "local",
            }
        )
    )
    run(home, "pipeline", "create", "-f", str(spec))
    for args in (
        ("branch", "create", "p@mine"),
        ("branch", "delete", "p@master"),
        ("rollback", "p@master", "--to", "master"),
    ):
        assert "is the output of pipeline p; it is read-only" in fails(home, *args, code=8)
    assert list(json.loads(out(run(home, "branch", "list", "p", "--json")))) == ["master"]


def test_spec_reports_every_field_error_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    spec = tmp_path / "p.yaml"
    spec.write_text(
        "pipeline: {name: p}\ninput: {pfs: {repo: nope, glob: '/*'}}\ntransform: {cmd: [true]}\n"
    )
    line = fails(home, "pipeline", "create", "-f", str(spec), code=2)
    assert line == (
        "pfsfs: error: 2 problems: input.pfs.repo: repo 'nope' does not exist; "
        "transform.image: required by the podman runner"
    )
    assert "input.pfs.repo" not in fails(home, "pipeline", "inspect", "p", code=3)  # none made


def test_stats_counts_empty_branches_on_local_and_s3(tmp_path: Path, s3_server) -> None:  # type: ignore[no-untyped-def]
    from .s3server import TEST_ACCESS_KEY, TEST_SECRET_KEY

    local = tmp_path / "local"
    s3 = tmp_path / "s3"
    creds = {"AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY}
    old = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)
    try:
        prefix = f"stats-{os.urandom(4).hex()}"
        run(
            s3,
            "init",
            "--store",
            f"s3://{s3_server.bucket}/{prefix}",
            "--endpoint-url",
            s3_server.endpoint,
        )
        f = tmp_path / "f"
        f.write_text("x")
        counts = []
        for home in (local, s3):
            run(home, "repo", "create", "r")  # master: empty
            run(home, "put", "r@dev:/f", "-f", str(f))
            run(home, "branch", "create", "r@empty", "--from", "master")  # no commits either
            run(home, "repo", "create", "q")
            counts.append(json.loads(out(run(home, "stats", "--json")))["branches"])
        assert counts == [4, 4]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_wait_lists_each_output_once_and_why_names_every_input(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "repo", "create", "params")
    run(home, "put", "data@master:/a", "-f", "-", input=b"a\n")
    run(home, "put", "params@master:/k", "-f", "-", input=b"k\n")

    def pipeline(name: str, inp: dict[str, object], cmd: str) -> None:
        path = tmp_path / f"{name}.json"
        spec = {"pipeline": {"name": name}, "input": inp, "runner": "local"}
        path.write_text(json.dumps({**spec, "transform": {"cmd": ["sh", "-c", cmd]}}))
        run(home, "pipeline", "create", "-f", str(path))

    copy = 'cat "$PFS_DATA"/* "$PFS_PARAMS"/* > "$PFS_OUT"/out'
    cross = {
        "cross": [{"pfs": {"repo": "data", "glob": "/"}}, {"pfs": {"repo": "params", "glob": "/"}}]
    }
    pipeline("left", cross, copy)
    pipeline("right", {"pfs": {"repo": "data", "glob": "/"}}, 'cat "$PFS_DATA"/a > "$PFS_OUT"/r')
    diamond = {
        "cross": [{"pfs": {"repo": "left", "glob": "/"}}, {"pfs": {"repo": "right", "glob": "/"}}]
    }
    pipeline("both", diamond, 'cat "$PFS_LEFT"/out "$PFS_RIGHT"/r > "$PFS_OUT"/all')
    run(home, "pipeline", "run")
    outputs = out(run(home, "wait", "data@master", "--timeout", "30")).split()
    assert sorted(o.split("@")[0] for o in outputs) == ["both", "left", "right"], outputs
    why = out(run(home, "why", "left@master:/out"))
    data, params = (
        out(run(home, "log", f"{r}@master", "-n", "1")).split()[0] for r in ("data", "params")
    )
    line = next(x for x in why.splitlines() if "reproduce" in x)
    assert "pfsfs mount --repos data@" in line and f"data@{data}" in line, why
    assert f"params@{params}" in line, why


# -- 10. shell completion -----------------------------------------------------------------------
def _seeded_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "repo", "create", "other")
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "b.txt").write_text("b")
    (d / "a.txt").write_text("a")
    run(home, "put", "data@master:/", "-f", f"{d}/", "-r")
    run(home, "branch", "create", "data@dev")
    return home


def test_completion_function_completes_repos_branches_and_paths(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import click

    from pfsfs.cli.completion import complete_ref
    from pfsfs.cli.main import cli

    home = _seeded_home(tmp_path)
    monkeypatch.setenv("PFSFS_HOME", str(home))
    ctx = click.Context(cli)

    def values(text: str) -> list[str]:
        return [i.value for i in complete_ref(ctx, cli.params[0], text)]

    assert values("d") == ["data@dev", "data@master"]
    assert values("data@m") == ["data@master"]
    assert values("data@master:/") == ["data@master:/a.txt", "data@master:/sub/"]
    assert values("data@dev:/sub/") == ["data@dev:/sub/b.txt"]
    for broken in ("nosuch@x:/a", "data@master:/a.txt/x", "@@", "data@zzzzzz:/", "x" * 300):
        assert values(broken) == []
    monkeypatch.setenv("PFSFS_HOME", str(tmp_path / "nohome"))
    assert values("d") == [] and not (tmp_path / "nohome").exists()


def test_completion_through_the_shell_protocol(tmp_path: Path) -> None:
    home = _seeded_home(tmp_path)
    for shell in ("bash", "zsh", "fish"):
        script = out(run(home, "completion", shell))
        assert "_PFSFS_COMPLETE" in script and f"{shell}_complete" in script
    env = {**os.environ, "PFSFS_HOME": str(home), "_PFSFS_COMPLETE": "bash_complete"}

    def complete(*words: str) -> list[str]:
        proc = subprocess.run(
            [PFSFS],
            env={**env, "COMP_WORDS": " ".join(("pfsfs", *words)), "COMP_CWORD": str(len(words))},
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == 0 and not proc.stderr, proc.stderr
        return [line.split(",", 1)[1] for line in proc.stdout.decode().splitlines()]

    assert complete("cat", "data@master:/s") == ["data@master:/sub/"]
    assert complete("log", "oth") == ["other@master"]
    assert complete("branch", "list", "o") == ["other"]
    assert complete("mount", "data@dev", "") == [""]  # then a directory (type dir)
    assert "completion" in complete("comp")


# -- 9. progress: bytes, rate, time left, only on a terminal --------------------------------------
def _on_a_pty(home: Path, *args: str) -> tuple[int, str]:
    """Run pfsfs with stderr on a pseudo-terminal; (exit code, what the terminal showed)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [PFSFS, "--home", str(home), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.wait(timeout=120), shown.decode(errors="replace")


def test_progress_shows_bytes_rate_and_time_left_on_a_terminal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    big = tmp_path / "big"
    big.write_bytes(os.urandom(48 << 20))
    run(home, "repo", "create", "r")
    code, shown = _on_a_pty(home, "put", "r@master:/big", "-f", str(big))
    assert code == 0, shown
    final = shown.replace("\r\n", "\n").split("\r")[-1].splitlines()[0]
    assert re.fullmatch(
        r"put \[#{24}\] 100%  48\.0 MiB/48\.0 MiB  [\d.]+ [KMG]i?B/s  0:00 left *", final
    ), final
    code, shown = _on_a_pty(home, "get", "r@master:/big", "-o", str(tmp_path / "back"))
    assert code == 0 and "48.0 MiB/48.0 MiB" in shown and "/s" in shown, shown
    # Not a terminal: no progress at all.
    proc = run(home, "get", "r@master:/big", "-o", str(tmp_path / "back2"))
    assert err(proc) == ""


def test_fsck_deep_and_gc_show_progress_on_a_terminal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    big = tmp_path / "big"
    big.write_bytes(os.urandom(24 << 20))
    run(home, "repo", "create", "r")
    run(home, "put", "r@master:/big", "-f", str(big))
    code, shown = _on_a_pty(home, "fsck", "--deep")
    assert code == 0 and re.search(r"fsck \[#{24}\] 100%  2\d\.\d MiB/2\d\.\d MiB", shown), shown
    run(home, "repo", "delete", "r", "--force")
    code, shown = _on_a_pty(home, "gc")
    assert code == 0 and re.search(r"gc \[#{24}\] 100%", shown), shown
    assert err(run(home, "fsck", "--deep")) == ""  # not a terminal: no progress line


def test_progress_line_is_throttled_and_estimates_time_left(capsys) -> None:  # type: ignore[no-untyped-def]
    from pfsfs.cli.common import Progress

    now = [100.0]
    bar = Progress(100 << 20, "get", clock=lambda: now[0])
    for _ in range(50):
        now[0] += 0.01
        bar.update(1 << 20)
    lines = capsys.readouterr().err.split("\r")[1:]
    assert len(lines) == 5  # 0.5 s of updates, redrawn at most 10 times a second
    assert re.fullmatch(
        r"get \[#+-+\]  4\d%  4\d\.0 MiB/100\.0 MiB  100\.0 MiB/s  0:01 left", lines[-1].rstrip()
    ), lines


def test_snapshot_and_unmount_without_m_name_what_changed(env: Env) -> None:
    env.run("repo", "create", "data")
    with env.mounted("data@master") as mp:
        write(mp / "a.txt", "a")
        (mp / "b").mkdir()
        write(mp / "b" / "c.txt", "c")
        commit = env.out("snapshot", str(mp))
        assert len(commit) == 64
        log = env.out("log", "data@master", "-n", "1")
        assert log.endswith("snapshot: 2 files changed (a.txt, b/c.txt)"), log
        proc = env.run("snapshot", str(mp))
        assert proc.stdout == "" and proc.stderr.strip() == "no changes; nothing committed"
        for n in range(4):
            write(mp / f"n{n}", "x")
        env.run("unmount", str(mp))
    log = env.out("log", "data@master", "-n", "1")
    assert log.endswith("unmount: 4 files changed (n0, n1, n2, …)"), log
