"""The local runner's bubblewrap sandbox, for real, through the CLI: a transform that tries to
read host secrets, the pfsfs home and its store, `/root`, and a repo it did not declare, and to
write outside `/pfs/out`, commits none of it and runs as nobody; a normal transform still works.

The home lives under /var/tmp, not /tmp: the sandbox's /tmp was always private, so a home there
would prove nothing about what the transform can see of the host.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cli import run
from .pipeline_fixtures import ensure_bwrap


@pytest.fixture(scope="module", autouse=True)
def bwrap() -> str:
    return ensure_bwrap()


@pytest.fixture
def home() -> Iterator[Path]:
    """A pfsfs home outside /tmp, where a daemon's home (~/.pfsfs) would be."""
    path = Path(tempfile.mkdtemp(prefix="pfsfs-sandbox-test-", dir="/var/tmp"))
    try:
        yield path / "home"
    finally:
        shutil.rmtree(path)


def create_pipeline(home: Path, name: str, script: str, **transform: Any) -> None:
    spec = {
        "pipeline": {"name": name},
        "input": {"pfs": {"repo": "data", "glob": "/"}},
        "transform": {"cmd": ["sh", "-c", script], **transform},
        "runner": "local",
    }
    path = home.parent / f"{name}.json"
    path.write_text(json.dumps(spec))
    run(home, "pipeline", "create", "-f", str(path))


def output_files(home: Path, ref: str, dest: Path) -> dict[str, bytes]:
    """Every file of `ref`, read back with `pfsfs get`, by path below the root."""
    run(home, "get", ref, "-o", str(dest))
    return {
        str(p.relative_to(dest)): p.read_bytes()
        for p in sorted(dest.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_a_transform_reads_no_host_secret_and_runs_as_nobody(home: Path, tmp_path: Path) -> None:
    secret = f"undeclared-{uuid.uuid4().hex}"
    marker = f"home-marker-{uuid.uuid4().hex}"
    run(home, "repo", "create", "data")
    run(home, "repo", "create", "secret")
    run(home, "put", "data@master:/a.txt", "-f", "-", input=b"alpha\n")
    run(home, "put", "secret@master:/s.txt", "-f", "-", input=secret.encode())
    (home / "marker.txt").write_text(marker)
    host_tmp = f"/tmp/pfsfs-sandbox-{uuid.uuid4().hex}"
    script = f"""
        mkdir -p /pfs/out/loot
        id -u > /pfs/out/uid
        stat -c %a /pfs/out > /pfs/out/out-mode
        ls /pfs > /pfs/out/pfs-listing
        cat /etc/shadow /etc/gshadow > /pfs/out/loot/shadow 2>/dev/null
        cp -r {home}/marker.txt {home}/config.json {home}/store /pfs/out/loot/ 2>/dev/null
        ls -A {home} > /pfs/out/loot/home-listing 2>/dev/null
        ls -A /root /home > /pfs/out/loot/homes 2>/dev/null
        cat /root/.ssh/* /etc/ssh/*key > /pfs/out/loot/keys 2>/dev/null
        cat /pfs/secret/s.txt > /pfs/out/loot/secret 2>/dev/null
        for t in {home}/evil /etc/evil /usr/evil /evil /pfs/data/evil; do
            (echo x > "$t") 2>/dev/null && echo "$t" >> /pfs/out/wrote
        done
        touch {host_tmp}
        cp /pfs/data/a.txt /pfs/out/copy.txt
        python3 -c 'open("/pfs/out/py.txt", "w").write("python ok\\n")'
        (umask 077; echo private > /pfs/out/private.txt)
        printf '#!/bin/sh\\n' > /pfs/out/tool && chmod 6755 /pfs/out/tool
        true
    """
    create_pipeline(home, "probe", script)
    assert "success (1 processed" in run(home, "pipeline", "run").stdout.decode()

    files = output_files(home, "probe@master:/", tmp_path / "got")
    loot = {path: data for path, data in files.items() if path.startswith("loot/")}
    assert loot == {
        "loot/shadow": b"",
        "loot/home-listing": b"",
        "loot/homes": b"",
        "loot/keys": b"",
        "loot/secret": b"",
    }
    assert files["uid"] == b"65534\n"
    assert files["out-mode"] == b"700\n"  # no other host user reaches what nobody writes
    assert files["pfs-listing"] == b"data\nout\n"
    assert "wrote" not in files
    everything = b"".join(files.values())
    for leaked in (secret.encode(), marker.encode(), b"$6$", b"$y$"):
        assert leaked not in everything
    assert not (home / "evil").exists() and not os.path.exists("/etc/evil")
    assert not os.path.exists(host_tmp)

    # The normal work went through, written by nobody and committed intact.
    assert files["copy.txt"] == b"alpha\n" and files["py.txt"] == b"python ok\n"
    assert files["private.txt"] == b"private\n"
    assert stat.S_IMODE((tmp_path / "got" / "private.txt").stat().st_mode) == 0o600
    # Set-id bits, which would be the daemon's uid on the host, are cleared before the commit.
    assert stat.S_IMODE((tmp_path / "got" / "tool").stat().st_mode) == 0o755
    assert run(home, "cat", "data@master:/a.txt").stdout == b"alpha\n"


def test_the_spec_user_sets_the_sandbox_uid(home: Path) -> None:
    run(home, "repo", "create", "data")
    run(home, "put", "data@master:/a.txt", "-f", "-", input=b"alpha\n")
    script = 'echo "$(id -u) $(id -g) $(id -un) $HOME" > /pfs/out/ids; cp /pfs/data/a.txt /pfs/out/'
    create_pipeline(home, "ids", script, user="1234:2345")
    run(home, "pipeline", "run")
    try:
        name = pwd.getpwuid(1234).pw_name  # a host user of that uid lends its name
    except KeyError:
        name = "pfsfs"
    assert run(home, "cat", "ids@master:/ids").stdout == f"1234 2345 {name} /tmp\n".encode()
    assert run(home, "cat", "ids@master:/a.txt").stdout == b"alpha\n"


def test_an_unknown_user_fails_the_datum_naming_it(home: Path) -> None:
    run(home, "repo", "create", "data")
    run(home, "put", "data@master:/a.txt", "-f", "-", input=b"alpha\n")
    create_pipeline(home, "who", "cp /pfs/data/a.txt /pfs/out/", user="no-such-user")
    proc = run(home, "pipeline", "run", check=False)
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr
    job_id = json.loads(run(home, "job", "list", "--json").stdout)[0]["id"]
    datum = json.loads(run(home, "datum", "list", job_id, "--json").stdout)[0]
    assert datum["state"] == "failed"
    assert "no user 'no-such-user' on this host" in json.dumps(datum)
    # It never ran: nothing to trace, and no warning that its opens were not traced.
    assert datum["outside_trace"] == "off"
    job = json.loads(run(home, "job", "inspect", job_id, "--json").stdout)
    assert not [w for w in job["warnings"] if "outside /pfs" in w], job["warnings"]
    assert json.loads(run(home, "branch", "list", "who", "--json").stdout) == {"master": None}
