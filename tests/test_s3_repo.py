"""pfsfs on S3, end to end: the CLI journey, several homes on one bucket, faults, push/pull.

Everything talks HTTP to a real moto server (``tests/s3server.py``); each test uses its own
prefix. The CLI runs as a subprocess the way a user runs it; credentials reach it through the
environment only (dummy values that tests grep for in every output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfsfs.changes import ChangeSet
from pfsfs.home import HomeConfig
from pfsfs.model import FILE, Entry, ManifestChunk
from pfsfs.repository import Repository
from pfsfs.store.cache import CachingStore
from pfsfs.store.s3 import S3ObjectStore

from . import atomic_moto
from .cli import PFSFS, fails, run
from .s3server import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoServer, free_port, run_moto_server
from .tcpproxy import KillableProxy

SECRETS = (TEST_ACCESS_KEY, TEST_SECRET_KEY)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for the CLI subprocesses (and in-process stores), from the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def atomic_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto server whose conditional writes are atomic (see ``tests/atomic_moto.py``)."""
    script = atomic_moto.executable(tmp_path_factory.mktemp("atomic-moto"))
    with run_moto_server(binary=script) as server:
        yield server


def no_secrets(*texts: bytes | str) -> None:
    for text in texts:
        s = text.decode(errors="replace") if isinstance(text, bytes) else text
        for secret in SECRETS:
            assert secret not in s, f"a credential leaked: {s[:500]}"


def s3_home(
    tmp_path: Path,
    name: str,
    endpoint: str,
    bucket: str,
    prefix: str,
    **tuning: object,
) -> Path:
    """``pfsfs init --store s3://bucket/prefix``, then extra store settings in config.json."""
    home = tmp_path / name
    run(home, "init", "--store", f"s3://{bucket}/{prefix}", "--endpoint-url", endpoint)
    if tuning:
        set_store_config(home, **tuning)
    return home


def set_store_config(home: Path, **values: object) -> None:
    path = home / "config.json"
    config = json.loads(path.read_text())
    config["store"].update(values)
    path.write_text(json.dumps(config))


def new_prefix() -> str:
    return f"repo-{uuid.uuid4().hex[:12]}"


def tiny_file(repo: Repository, w: object, data: bytes) -> Entry:
    """A one-chunk file entry written through an open ``ObjectWriter``."""
    loc = w.put_chunk(data)  # type: ignore[attr-defined]
    manifest = w.put_manifest([ManifestChunk(loc, len(data))])  # type: ignore[attr-defined]
    return Entry(FILE, 0o644, 0, 0, 1, len(data), manifest, nfiles=1)


# -- the CLI journey -------------------------------------------------------------------------
def test_cli_journey_on_s3(tmp_path: Path, s3_server: MotoServer) -> None:
    prefix = new_prefix()
    home = s3_home(tmp_path, "home", s3_server.endpoint, s3_server.bucket, prefix)
    config = json.loads((home / "config.json").read_text())
    assert config["store"]["type"] == "s3" and config["store"]["prefix"] == prefix
    no_secrets(json.dumps(config))

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / f"f{i}.txt").write_text(f"file {i}\n")
    big = os.urandom(3 << 20)
    (src / "sub" / "big.bin").write_bytes(big)
    run(home, "repo", "create", "data")
    run(home, "put", "data@master:/d", "-f", str(src), "-r", "-m", "first")
    (tmp_path / "new.txt").write_bytes(b"new content\n")
    run(home, "put", "data@master:/d/new.txt", "-f", str(tmp_path / "new.txt"))

    out = tmp_path / "out"
    run(home, "get", "data@master:/d", "-o", str(out))
    assert (out / "sub" / "big.bin").read_bytes() == big
    assert (out / "f7.txt").read_text() == "file 7\n"
    assert run(home, "cat", "data@master:/d/new.txt").stdout == b"new content\n"
    listing = run(home, "ls", "data@master:/d").stdout.decode()
    assert "new.txt" in listing and "sub" in listing
    log = json.loads(run(home, "log", "data", "--json").stdout)
    assert [c["message"] for c in log] == ["put /d/new.txt", "first"]
    diff = json.loads(run(home, "diff", "data@master~1", "data@master", "--json").stdout)
    assert "/d/new.txt" in json.dumps(diff)

    # Make the second commit's objects unreachable, then collect them.
    run(home, "rollback", "data@master", "--to", "data@master~1", "--hard")
    young = json.loads(run(home, "gc", "--json").stdout)  # shared store: 1 hour grace
    assert young["deleted_blobs"] == 0 and young["kept_young"] >= 2
    gone = json.loads(run(home, "gc", "--grace", "0", "--json").stdout)
    assert gone["deleted_blobs"] >= 2
    assert b"ok" in run(home, "fsck", "--deep").stdout
    run(home, "get", "data@master:/d/sub/big.bin", "-o", str(tmp_path / "again.bin"))
    assert (tmp_path / "again.bin").read_bytes() == big
    stats = json.loads(run(home, "stats", "--json").stdout)
    assert stats["commits"] == 1


def test_two_homes_share_one_bucket(tmp_path: Path, s3_server: MotoServer) -> None:
    prefix = new_prefix()
    a = s3_home(tmp_path, "a", s3_server.endpoint, s3_server.bucket, prefix)
    b = s3_home(tmp_path, "b", s3_server.endpoint, s3_server.bucket, prefix)
    run(a, "repo", "create", "shared")
    (tmp_path / "x").write_text("from a\n")
    run(a, "put", "shared@master:/x", "-f", str(tmp_path / "x"))
    assert run(b, "cat", "shared@master:/x").stdout == b"from a\n"  # b's next call sees it
    (tmp_path / "y").write_text("from b\n")
    run(b, "put", "shared@master:/y", "-f", str(tmp_path / "y"))
    assert run(a, "cat", "shared@master:/y").stdout == b"from b\n"
    assert len(json.loads(run(a, "log", "shared", "--json").stdout)) == 2
    refreshed = json.loads(run(a, "refresh", "--json").stdout)
    assert refreshed["commits"] == 2 and refreshed["stale_index_entries"] == 0


def test_gc_keeps_every_copy_of_content_two_machines_stored(
    tmp_path: Path, s3_server: MotoServer
) -> None:
    prefix = new_prefix()
    a = s3_home(tmp_path, "a", s3_server.endpoint, s3_server.bucket, prefix)
    b = s3_home(tmp_path, "b", s3_server.endpoint, s3_server.bucket, prefix)
    (tmp_path / "same.txt").write_text("same content\n")
    run(a, "repo", "create", "r")
    run(a, "put", "r@master:/a.txt", "-f", str(tmp_path / "same.txt"))
    run(b, "put", "r@master:/b.txt", "-f", str(tmp_path / "same.txt"))  # b's own data pack
    gone = json.loads(run(a, "gc", "--grace", "0", "--json").stdout)
    fresh = s3_home(tmp_path, "fresh", s3_server.endpoint, s3_server.bucket, prefix)
    for name in ("a.txt", "b.txt"):
        assert run(fresh, "cat", f"r@master:/{name}", check=False).returncode == 0, gone


# -- concurrency ----------------------------------------------------------------------------
_COMMITTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pfsfs.changes import ChangeSet
    from pfsfs.home import HomeConfig
    from pfsfs.model import FILE, Entry, ManifestChunk
    from pfsfs.repository import Repository
    home, endpoint, bucket, prefix, who, count, start_at = sys.argv[1:8]
    store = {"type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint}
    repo = Repository.init(Path(home), HomeConfig(store))
    while time.time() < float(start_at):
        time.sleep(0.005)
    for i in range(int(count)):
        changes = ChangeSet()
        with repo.writer() as w:
            data = f"{who} {i}".encode()
            loc = w.put_chunk(data)
            manifest = w.put_manifest([ManifestChunk(loc, len(data))])
            changes.put(f"/{who}/{i}", Entry(FILE, 0o644, 0, 0, 1, len(data), manifest, nfiles=1))
            repo.commit("race", "master", changes, f"{who} {i}", writer=w, rebase=True)
    repo.close()
    """
)


def test_two_processes_commit_200_times_each_and_lose_none(
    tmp_path: Path, atomic_s3: MotoServer
) -> None:
    s3_server = atomic_s3  # plain moto can lose a race of two conditional PUTs (atomic_moto.py)
    prefix = new_prefix()
    home = s3_home(tmp_path, "home", s3_server.endpoint, s3_server.bucket, prefix)
    run(home, "repo", "create", "race")
    per_process = 200
    start_at = time.time() + 3.0
    env = s3_server.env()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _COMMITTER,
                str(tmp_path / f"h{who}"),
                s3_server.endpoint,
                s3_server.bucket,
                prefix,
                who,
                str(per_process),
                str(start_at),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("p0", "p1")
    ]
    for p in procs:
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    log = json.loads(run(home, "log", "race", "--json").stdout)
    assert len(log) == 2 * per_process
    assert sorted(c["message"] for c in log) == sorted(
        f"{who} {i}" for who in ("p0", "p1") for i in range(per_process)
    )
    for who in ("p0", "p1"):
        names = run(home, "ls", f"race@master:/{who}").stdout.decode().split()
        assert len(names) == per_process
    assert b"ok" in run(home, "fsck").stdout


# -- faults ---------------------------------------------------------------------------------
def _big_put(home: Path, tmp_path: Path, size: int) -> tuple[subprocess.Popen[bytes], bytes]:
    data = os.urandom(size)
    (tmp_path / "big.bin").write_bytes(data)
    env = {**os.environ, "PFSFS_HOME": str(home)}
    proc = subprocess.Popen(
        [*PFSFS, "put", "data@master:/big.bin", "-f", str(tmp_path / "big.bin")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, data


def _wait_bytes(proxy: KillableProxy, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while proxy.bytes_up < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.parametrize("comes_back", [False, True], ids=["dies", "restarts"])
def test_server_dies_in_the_middle_of_a_commit(
    tmp_path: Path, s3_server: MotoServer, comes_back: bool
) -> None:
    """The client loses the server mid-put. Either the put fails cleanly (one line, branch
    untouched) or, if the server comes back within the retries, it completes. Either way every
    ref points at complete commits: fsck through a direct connection proves it."""
    prefix = new_prefix()
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    proxy = KillableProxy(port)
    tuning = {} if comes_back else {"max_attempts": 2, "connect_timeout": 2}
    home = s3_home(tmp_path, "home", proxy.endpoint, s3_server.bucket, prefix, **tuning)
    direct = s3_home(tmp_path, "direct", s3_server.endpoint, s3_server.bucket, prefix)
    run(home, "repo", "create", "data")
    before = json.loads(run(direct, "log", "data", "--json").stdout)
    proxy.bytes_up = 0
    proc, data = _big_put(home, tmp_path, 48 << 20)
    try:
        _wait_bytes(proxy, 16 << 20, proc)
        assert proc.poll() is None, "the put finished before the server could die"
        proxy.kill()
        if comes_back:
            time.sleep(1.0)
            proxy.restart()
        _out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.kill()
    assert b"Traceback" not in err
    no_secrets(err)
    after = json.loads(run(direct, "log", "data", "--json").stdout)
    if comes_back:
        assert proc.returncode == 0, err
        assert len(after) == len(before) + 1
        run(direct, "get", "data@master:/big.bin", "-o", str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == data
    else:
        assert proc.returncode == 7, err
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pfsfs: error: cannot reach S3 endpoint")
        assert after == before  # the branch did not move
    assert b"ok" in run(direct, "fsck").stdout


def test_killing_the_real_server_mid_put_fails_in_one_line(tmp_path: Path) -> None:
    with run_moto_server() as server:
        home = s3_home(
            tmp_path, "home", server.endpoint, server.bucket, "p", max_attempts=2, connect_timeout=2
        )
        run(home, "repo", "create", "data")
        proc, _ = _big_put(home, tmp_path, 256 << 20)
        # Kill it once the first data pack has landed: the put is well under way.
        client = server.client()
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            listing = client.list_objects_v2(Bucket=server.bucket, Prefix="p/pack/")  # type: ignore[attr-defined]
            if listing.get("KeyCount"):
                break
            time.sleep(0.02)
        server.kill()
        _out, err = proc.communicate(timeout=240)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 7 and len(lines) == 1, err
    assert lines[0].startswith("pfsfs: error: cannot reach S3 endpoint"), lines
    no_secrets(err)


def test_wrong_bucket_and_unreachable_endpoint_are_one_line_errors(
    tmp_path: Path, s3_server: MotoServer
) -> None:
    line = fails(
        tmp_path / "h1",
        "init",
        "--store",
        "s3://no-such-bucket/p",
        "--endpoint-url",
        s3_server.endpoint,
        code=7,
    )
    assert line == (
        f"pfsfs: error: bucket 'no-such-bucket' does not exist at {s3_server.endpoint} "
        "(--create-bucket creates it)"
    )
    no_secrets(line)
    home = s3_home(tmp_path, "h2", s3_server.endpoint, s3_server.bucket, new_prefix())
    dead = f"http://127.0.0.1:{free_port()}"
    set_store_config(home, endpoint_url=dead, max_attempts=1, connect_timeout=1)
    line = fails(home, "repo", "list", code=7)
    assert line.startswith(f"pfsfs: error: cannot reach S3 endpoint {dead}"), line
    line = fails(tmp_path / "h3", "init", "--store", "s3://Bad_Bucket/p", code=2)
    assert "invalid bucket name" in line
    set_store_config(home, endpoint_url=s3_server.endpoint, max_attempts="lots")
    assert "max_attempts" in fails(home, "repo", "list", code=2)


def test_rejected_credentials_are_one_line_and_never_quoted(tmp_path: Path) -> None:
    with run_moto_server(extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "1"}) as server:
        home = tmp_path / "home"
        home.mkdir()
        store = {
            "type": "s3",
            "bucket": server.bucket,
            "prefix": "p",
            "endpoint_url": server.endpoint,
        }
        (home / "config.json").write_text(json.dumps({"format": 1, "store": store}))
        proc = run(home, "-vv", "repo", "list", check=False)
    assert proc.returncode == 7
    assert b"S3 credentials were rejected" in proc.stderr.splitlines()[-1]
    no_secrets(proc.stdout, proc.stderr)


def test_credentials_never_appear_in_json_or_logs(tmp_path: Path, s3_server: MotoServer) -> None:
    prefix = new_prefix()
    home = s3_home(tmp_path, "home", s3_server.endpoint, s3_server.bucket, prefix)
    (tmp_path / "f").write_text("x\n")
    outputs = [
        run(home, "-vv", "repo", "create", "r"),
        run(home, "-vv", "put", "r@master:/f", "-f", str(tmp_path / "f")),
        run(home, "-vv", "repo", "list", "--json"),
        run(home, "-vv", "log", "r", "--json"),
        run(home, "-vv", "gc", "--json"),
        run(home, "-vv", "stats", "--json"),
        run(
            home,
            "-vv",
            "remote",
            "add",
            "o",
            f"s3://{s3_server.bucket}/{prefix}-remote",
            "--endpoint-url",
            s3_server.endpoint,
        ),
        run(home, "-vv", "remote", "list", "--json"),
        run(home, "-vv", "push", "o", "--json"),
        run(home, "-vv", "refresh", "--json"),
    ]
    for proc in outputs:
        no_secrets(proc.stdout, proc.stderr)
    assert b"S3 requests" in outputs[1].stderr  # the logs did run at INFO/DEBUG
    for path in home.rglob("*.json"):
        no_secrets(path.read_text())


# -- push / pull ----------------------------------------------------------------------------
def _push(home: Path, *args: str) -> dict[str, object]:
    return json.loads(run(home, "push", *args, "--json").stdout)


def _pull(home: Path, *args: str) -> dict[str, object]:
    return json.loads(run(home, "pull", *args, "--json").stdout)


def test_push_and_pull_move_only_missing_objects(tmp_path: Path, s3_server: MotoServer) -> None:
    laptop = tmp_path / "laptop"
    url = f"s3://{s3_server.bucket}/{new_prefix()}"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"small{i}").write_text(f"small {i}\n")
    (src / "big").write_bytes(os.urandom(5 << 20))
    run(laptop, "repo", "create", "data")
    run(laptop, "put", "data@master:/d", "-f", str(src), "-r")
    local_blobs = {
        p.name for p in (laptop / "store").rglob("*") if p.is_file() and p.parent.name != "refs"
    }
    local_blobs = {n for n in local_blobs if len(n) > 20}  # packs, chunks, commits

    first = _push(laptop, url, "--endpoint-url", s3_server.endpoint)
    assert first["commits_copied"] == 1
    assert first["blobs_copied"] + first["commits_copied"] == len(local_blobs)
    assert first["branches"] == {"data@master": "created"}
    again = _push(laptop, url, "--endpoint-url", s3_server.endpoint)
    assert (again["blobs_copied"], again["commits_copied"]) == (0, 0)
    assert again["branches"] == {"data@master": "up to date"}

    (src / "small3").write_text("changed\n")
    run(laptop, "put", "data@master:/d/small3", "-f", str(src / "small3"))
    run(laptop, "remote", "add", "origin", url, "--endpoint-url", s3_server.endpoint)
    dry = _push(laptop, "--dry-run")
    assert dry["dry_run"] and dry["commits_copied"] == 1
    incremental = _push(laptop)  # the only remote
    assert incremental["commits_copied"] == 1
    assert 1 <= incremental["blobs_copied"] <= 2  # one meta pack, one small data pack
    assert incremental["blobs_copied"] == dry["blobs_copied"]

    # A second laptop pulls everything, bit for bit.
    other = tmp_path / "other"
    pulled = _pull(other, url, "--endpoint-url", s3_server.endpoint)
    assert pulled["commits_copied"] == 2 and pulled["branches"] == {"data@master": "created"}
    run(other, "get", "data@master:/d", "-o", str(tmp_path / "out"))
    for f in src.iterdir():
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()
    assert b"ok" in run(other, "fsck", "--deep").stdout
    assert _pull(other, url, "--endpoint-url", s3_server.endpoint)["blobs_copied"] == 0

    # Both commit offline; the second to publish must pull first (or --force).
    (tmp_path / "a").write_text("a\n")
    (tmp_path / "b").write_text("b\n")
    run(laptop, "put", "data@master:/a", "-f", str(tmp_path / "a"))
    run(other, "put", "data@master:/b", "-f", str(tmp_path / "b"))
    assert _push(laptop)["branches"] == {"data@master": "updated"}
    line = fails(other, "push", url, "--endpoint-url", s3_server.endpoint, code=5)
    assert "data@master diverged" in line and "--force" in line
    fails(other, "pull", url, "--endpoint-url", s3_server.endpoint, code=5)
    forced = _push(other, url, "--endpoint-url", s3_server.endpoint, "--force")
    assert forced["branches"] == {"data@master": "forced"}
    assert _pull(laptop, "--force")["branches"] == {"data@master": "forced"}
    assert run(laptop, "cat", "data@master:/b").stdout == b"b\n"


def test_push_to_an_s3_home_and_bad_remotes(tmp_path: Path, s3_server: MotoServer) -> None:
    """A remote may be another home's path; unknown names and bad URLs are one-line errors."""
    laptop = tmp_path / "laptop"
    shared = s3_home(tmp_path, "shared", s3_server.endpoint, s3_server.bucket, new_prefix())
    (tmp_path / "f").write_text("f\n")
    run(laptop, "repo", "create", "r")
    run(laptop, "put", "r@master:/f", "-f", str(tmp_path / "f"))
    assert _push(laptop, str(shared))["branches"] == {"r@master": "created"}
    assert run(shared, "cat", "r@master:/f").stdout == b"f\n"
    assert "no remote named 'nope'" in fails(laptop, "push", "nope", code=3)
    assert "no remote given" in fails(laptop, "push", code=2)
    assert "s3://" in fails(laptop, "push", "http://example.com/x", code=2)
    assert "does not exist" in fails(laptop, "push", str(shared), "no-such-repo", code=3)
    leaky = f"http://{TEST_ACCESS_KEY}:{TEST_SECRET_KEY}@127.0.0.1:9"
    line = fails(laptop, "remote", "add", "x", "s3://bucket/p", "--endpoint-url", leaky, code=2)
    assert "must not carry credentials" in line
    no_secrets(line)


# -- request counts -------------------------------------------------------------------------
def test_reading_every_tree_of_a_100k_file_commit_costs_few_requests(
    tmp_path: Path, s3_server: MotoServer
) -> None:
    prefix = new_prefix()
    store = {"type": "s3", "bucket": s3_server.bucket, "prefix": prefix}
    store["endpoint_url"] = s3_server.endpoint
    with Repository.init(tmp_path / "writer", HomeConfig(store)) as repo:
        repo.create_repo("big")
        changes = ChangeSet()
        with repo.writer() as w:
            for i in range(100_000):
                changes.put(f"/d{i // 1000:03d}/f{i:06d}", tiny_file(repo, w, b"%d" % i))
            repo.commit("big", "master", changes, "100k files", writer=w)
    with Repository.init(tmp_path / "reader", HomeConfig(store)) as reader:
        assert isinstance(reader.cache, CachingStore)  # the reader reads through it
        inner = reader.store  # the store itself, below the cache
        assert isinstance(inner, S3ObjectStore)
        inner.requests.reset()
        head = reader.resolve("big@master")
        files = sum(1 for _, e in reader.walk(reader.root_of(head.commit)) if e.type == FILE)
        count = inner.requests.total
        print(f"reading every tree of a {files}-file commit: {count} S3 requests")
        assert files == 100_000
        assert count <= 100, inner.requests.by_operation()


def s3_requests(stderr: bytes) -> dict[str, int]:
    """The per-operation request counts that ``pfsfs -v`` logs when its store closes."""
    for line in stderr.decode().splitlines():
        if "S3 requests" in line:
            return json.loads(line.split("S3 requests", 1)[1].strip().replace("'", '"'))
    raise AssertionError(f"no request count in: {stderr.decode()}")


def test_a_big_file_moves_in_few_large_requests(tmp_path: Path, s3_server: MotoServer) -> None:
    """On S3 the chunks of a big file are packed (~16 MiB per PUT, not one PUT per ~1 MiB
    chunk) and read back cold in ranged GETs of several chunks; dedup, fsck and gc still work
    chunk by chunk."""
    prefix = new_prefix()
    writer = s3_home(tmp_path, "writer", s3_server.endpoint, s3_server.bucket, prefix)
    big = os.urandom(40 << 20)  # ~36 chunks
    (tmp_path / "big.bin").write_bytes(big)
    run(writer, "repo", "create", "data")
    done = run(writer, "-v", "put", "data@master:/big.bin", "-f", str(tmp_path / "big.bin"))
    puts = s3_requests(done.stderr)["PutObject"]
    assert puts <= 8, puts  # 3 data packs, 1 metadata pack, the commit, the ref(s)

    reader = s3_home(tmp_path, "reader", s3_server.endpoint, s3_server.bucket, prefix)
    out = tmp_path / "out.bin"
    done = run(reader, "-v", "get", "data@master:/big.bin", "-o", str(out))
    assert out.read_bytes() == big
    gets = s3_requests(done.stderr)["GetObject"]
    assert gets <= 16, gets  # 8 MiB spans: ~5 for the data, plus refs, commit, metadata pack
    # A get writes the content out: the read cache keeps the metadata it read, not the data.
    cache = reader / "cache" / "store"
    assert [p for p in (cache / "data-blocks").rglob("*") if p.is_file()] == []
    assert any(p.is_file() for p in (cache / "blobs").rglob("*"))
    assert run(reader, "cat", "data@master:/big.bin").stdout == big
    assert [p for p in (cache / "data-blocks").rglob("*") if p.is_file()] == []

    # Editing the middle stores a few new chunks (in a new pack), not the file again.
    edited = bytearray(big)
    edited[20 << 20 : (20 << 20) + 100] = b"x" * 100
    (tmp_path / "big.bin").write_bytes(edited)
    before = json.loads(run(writer, "stats", "--json").stdout)
    run(writer, "put", "data@master:/big.bin", "-f", str(tmp_path / "big.bin"))
    after = json.loads(run(writer, "stats", "--json").stdout)
    grown = after["stored_bytes"] - before["stored_bytes"]
    assert 0 < grown < 12 << 20, grown
    assert b"ok" in run(writer, "fsck", "--deep").stdout

    # Drop the edit: gc deletes the pack only the edit used, and the first version still reads.
    run(writer, "rollback", "data@master", "--to", "data@master~1", "--hard")
    gone = json.loads(run(writer, "gc", "--grace", "0", "--json").stdout)
    assert gone["deleted_blobs"] >= 1
    assert b"ok" in run(writer, "fsck", "--deep").stdout
    fresh = s3_home(tmp_path, "fresh", s3_server.endpoint, s3_server.bucket, prefix)
    assert run(fresh, "cat", "data@master:/big.bin").stdout == big


def test_the_repository_holds_the_read_cache_and_gc_empties_it(
    tmp_path: Path, s3_server: MotoServer
) -> None:
    """The store stays cache-free: the repository builds the read cache around it, reads and
    writes go through that cache, and what gc deletes leaves the cache as well."""
    from pfsfs import maintenance
    from pfsfs.ops.put import put, resolve_target

    store = {"type": "s3", "bucket": s3_server.bucket, "prefix": new_prefix()}
    store["endpoint_url"] = s3_server.endpoint
    src = tmp_path / "big"
    src.write_bytes(os.urandom(3 << 20))
    with Repository.init(tmp_path / "home", HomeConfig(store)) as repo:
        assert isinstance(repo.store, S3ObjectStore)
        assert isinstance(repo.cache, CachingStore) and repo.cache.inner is repo.store
        assert repo.reader.read_cache is repo.cache and repo.reader.store is repo.store
        repo.create_repo("r")
        put(repo, resolve_target(repo, "r@master:/big", str(src)), recursive=False)
        r = repo.resolve("r@master:/big")
        entry = repo.lookup(repo.root_of(r.commit), r.path)
        assert b"".join(repo.iter_file(entry)) == src.read_bytes()
        repo.cache.drain_cache_writes()
        blocks = repo.cache.root / "data-blocks"
        assert any(p.is_file() for p in blocks.rglob("*"))  # the read filled the cache
        repo.delete_repo("r")
        report = maintenance.gc(repo, grace=0.0)
        assert report.deleted_blobs > 0
        assert not any(p.is_file() for p in blocks.rglob("*"))


def test_a_put_sends_all_its_file_data_before_the_commits_ref_reads(
    tmp_path: Path, s3_server: MotoServer
) -> None:
    """The end of a put on S3: the last, partly filled data pack goes up as soon as the file is
    read, not after the commit's ref reads (which, queued behind the bulk uploads on a busy
    server, took a tenth of a second or more per GiB before it could start); the branch
    still moves only after everything the commit reaches has landed. (Puts of less than
    ``EARLY_BARRIER_BYTES`` skip this: see test_push_and_pull_move_only_missing_objects.)"""
    from pfsfs.ops.put import put, resolve_target

    store = {"type": "s3", "bucket": s3_server.bucket, "prefix": new_prefix()}
    store["endpoint_url"] = s3_server.endpoint
    data = os.urandom(40 << 20)  # full data packs and a partly filled one
    (tmp_path / "big.bin").write_bytes(data)
    sent: list[tuple[str, str, int]] = []  # (operation, url, body bytes), in sending order

    def record(request: object, event_name: str = "", **_: object) -> None:
        size = int(request.headers.get("Content-Length", 0) or 0)  # type: ignore[attr-defined]
        sent.append((event_name.rsplit(".", 1)[-1], str(request.url), size))  # type: ignore[attr-defined]

    with Repository.init(tmp_path / "home", HomeConfig(store)) as repo:
        repo.create_repo("data")
        s3 = repo.store
        assert isinstance(s3, S3ObjectStore)
        for client in {id(c): c for c in (s3._client(), s3._blob_client())}.values():
            client.meta.events.register("before-send.s3", record)
        target = resolve_target(repo, "data@master:/big.bin", str(tmp_path / "big.bin"))
        put(repo, target, recursive=False)
    run(tmp_path / "home", "get", "data@master:/big.bin", "-o", str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == data

    data_puts = [n for n, (op, _u, size) in enumerate(sent) if op == "PutObject" and size > 1 << 20]
    ref_reads = [n for n, (op, url, _s) in enumerate(sent) if op == "GetObject" and "/refs/" in url]
    ref_move = [n for n, (op, url, _s) in enumerate(sent) if op == "PutObject" and "/refs/" in url]
    assert len(data_puts) >= 3, sent
    assert max(data_puts) < ref_reads[-1], sent  # the data went up before the commit's reads
    assert max(n for n, (op, _u, _s) in enumerate(sent) if op == "PutObject") == ref_move[-1]
