"""Datum computation (globs, cross, union, join, group), datum ids and datum hashes."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from pfsfs.pipeline.datums import Datum, compute_datums, datum_hash
from pfsfs.pipeline.inputs import InputCommit, InputFile, provenance, resolve_inputs
from pfsfs.pipeline.spec import PipelineSpec, parse_spec_dict

from .pipeline_fixtures import commit, spec_dict

DATA_FILES = {
    "/a.txt": "A",
    "/b.txt": "B",
    "/dir/x.csv": "X",
    "/dir/sub/y.csv": "Y",
    "/dir-2/z.csv": "Z",
}
DATA = commit("data", DATA_FILES)


def _spec(input: dict[str, Any], **kw: Any) -> PipelineSpec:
    return parse_spec_dict(spec_dict(input=input, **kw))


def _datums(input: dict[str, Any], *commits: InputCommit) -> list[Datum]:
    spec = _spec(input)
    return compute_datums(spec.input, {c.key: c for c in commits})


def _shape(datums: list[Datum]) -> list[list[tuple[str, list[str]]]]:
    """Each datum as [(input name, [file paths])]."""
    return [[(di.name, [f.path for f in di.files]) for di in d.inputs] for d in datums]


def test_root_glob_is_one_datum_with_everything() -> None:
    datums = _datums({"pfs": {"repo": "data", "glob": "/"}}, DATA)
    assert _shape(datums) == [[("data", [f.path for f in DATA.files])]]
    di = datums[0].inputs[0]
    assert (di.repo, di.branch, di.commit_id, di.matches) == ("data", "master", "data-c1", ("/",))


def test_star_is_one_datum_per_top_level_entry() -> None:
    datums = _datums({"pfs": {"repo": "data", "glob": "/*"}}, DATA)
    assert _shape(datums) == [
        [("data", ["/a.txt"])],
        [("data", ["/b.txt"])],
        [("data", ["/dir/sub/y.csv", "/dir/x.csv"])],
        [("data", ["/dir-2/z.csv"])],
    ]


def test_second_level_and_doublestar_and_patterns() -> None:
    second = _datums({"pfs": {"repo": "data", "glob": "/*/*"}}, DATA)
    assert _shape(second) == [
        [("data", ["/dir-2/z.csv"])],
        [("data", ["/dir/sub/y.csv"])],
        [("data", ["/dir/x.csv"])],
    ]
    csvs = _datums({"pfs": {"repo": "data", "glob": "/**.csv"}}, DATA)
    assert [d.inputs[0].matches[0] for d in csvs] == [
        "/dir-2/z.csv",
        "/dir/sub/y.csv",
        "/dir/x.csv",
    ]
    txt = _datums({"pfs": {"repo": "data", "glob": "/[a]?txt"}}, DATA)
    assert _shape(txt) == [[("data", ["/a.txt"])]]
    assert _datums({"pfs": {"repo": "data", "glob": "/nothing*"}}, DATA) == []


def test_empty_commit_has_no_datums() -> None:
    empty = commit("data", {})
    assert _datums({"pfs": {"repo": "data", "glob": "/"}}, empty) == []
    assert _datums({"pfs": {"repo": "data", "glob": "/*"}}, empty) == []


def test_cross_is_the_cartesian_product() -> None:
    left = commit("l", {"/1": "1", "/2": "2"})
    right = commit("r", {"/a": "a", "/b": "b", "/c": "c"})
    datums = _datums(
        {"cross": [{"pfs": {"repo": "l", "glob": "/*"}}, {"pfs": {"repo": "r", "glob": "/*"}}]},
        left,
        right,
    )
    assert [[f.path for _, f in d.files()] for d in datums] == [
        ["/1", "/a"],
        ["/1", "/b"],
        ["/1", "/c"],
        ["/2", "/a"],
        ["/2", "/b"],
        ["/2", "/c"],
    ]
    assert [di.name for di in datums[0].inputs] == ["l", "r"]
    assert len({d.id for d in datums}) == 6
    empty = commit("r", {})
    assert (
        _datums(
            {"cross": [{"pfs": {"repo": "l", "glob": "/*"}}, {"pfs": {"repo": "r", "glob": "/*"}}]},
            left,
            empty,
        )
        == []
    )


def test_union_concatenates_and_may_share_a_name() -> None:
    a = commit("a", {"/1": "1", "/2": "2"})
    b = commit("b", {"/3": "3"})
    datums = _datums(
        {
            "union": [
                {"pfs": {"repo": "a", "glob": "/*", "name": "in"}},
                {"pfs": {"repo": "b", "glob": "/*", "name": "in"}},
            ]
        },
        a,
        b,
    )
    assert _shape(datums) == [[("in", ["/1"])], [("in", ["/2"])], [("in", ["/3"])]]
    assert [d.inputs[0].repo for d in datums] == ["a", "a", "b"]


def test_equal_datums_are_kept_once() -> None:
    a = commit("a", {"/1": "1"})
    datums = _datums(
        {
            "union": [
                {"pfs": {"repo": "a", "glob": "/*", "name": "in"}},
                {"pfs": {"repo": "a", "glob": "/", "name": "in"}},
            ]
        },
        a,
    )
    assert len(datums) == 1


JOIN_A = commit("purchases", {"/s1.txt": "p1", "/s2.txt": "p2", "/s3.txt": "p3"})
JOIN_B = commit("returns", {"/s1-r1.csv": "r1", "/s1-r2.csv": "r2", "/s2-r3.csv": "r3"})
JOIN_B_EXTRA = commit("returns", {"/s1-r1.csv": "r1", "/s9-r9.csv": "r9"})


def _join(outer_a: bool = False, outer_b: bool = False, b: InputCommit = JOIN_B) -> list[Datum]:
    pa: dict[str, Any] = {"repo": "purchases", "glob": "/(*).txt", "join_on": "$1"}
    pb: dict[str, Any] = {"repo": "returns", "glob": "/(*)-(*).csv", "join_on": "$1"}
    if outer_a:
        pa["outer_join"] = True
    if outer_b:
        pb["outer_join"] = True
    return _datums({"join": [{"pfs": pa}, {"pfs": pb}]}, JOIN_A, b)


def _files(datums: list[Datum]) -> list[list[str]]:
    return [[f.path for _, f in d.files()] for d in datums]


def test_inner_join_crosses_matching_keys() -> None:
    assert _files(_join()) == [
        ["/s1.txt", "/s1-r1.csv"],
        ["/s1.txt", "/s1-r2.csv"],
        ["/s2.txt", "/s2-r3.csv"],
    ]


def test_outer_join_keeps_unmatched_datums_of_the_outer_input() -> None:
    assert _files(_join(outer_a=True, b=JOIN_B_EXTRA)) == [
        ["/s1.txt", "/s1-r1.csv"],
        ["/s2.txt"],
        ["/s3.txt"],
    ]
    assert _files(_join(outer_b=True, b=JOIN_B_EXTRA)) == [
        ["/s1.txt", "/s1-r1.csv"],
        ["/s9-r9.csv"],
    ]
    assert _files(_join(outer_a=True, outer_b=True, b=JOIN_B_EXTRA)) == [
        ["/s1.txt", "/s1-r1.csv"],
        ["/s2.txt"],
        ["/s3.txt"],
        ["/s9-r9.csv"],
    ]


def test_group_collects_every_datum_with_the_same_key() -> None:
    logs = commit("logs", {"/2024-01/a.log": "1", "/2024-01/b.log": "2", "/2024-02/c.log": "3"})
    meta = commit("meta", {"/2024-01.json": "m1", "/2024-03.json": "m3"})
    datums = _datums(
        {
            "group": [
                {"pfs": {"repo": "logs", "glob": "/(*)/*", "group_by": "$1"}},
                {"pfs": {"repo": "meta", "glob": "/(*).json", "group_by": "$1"}},
            ]
        },
        logs,
        meta,
    )
    assert _shape(datums) == [
        [("logs", ["/2024-01/a.log", "/2024-01/b.log"]), ("meta", ["/2024-01.json"])],
        [("logs", ["/2024-02/c.log"])],
        [("meta", ["/2024-03.json"])],
    ]
    assert datums[0].inputs[0].matches == ("/2024-01/a.log", "/2024-01/b.log")


def test_nested_cross_of_union_and_ordering_is_deterministic() -> None:
    a = commit("a", {"/2": "2", "/1": "1"})
    b = commit("b", {"/x": "x"})
    c = commit("c", {"/y": "y"})
    tree = {
        "cross": [
            {"pfs": {"repo": "a", "glob": "/*"}},
            {
                "union": [
                    {"pfs": {"repo": "b", "glob": "/*", "name": "other"}},
                    {"pfs": {"repo": "c", "glob": "/*", "name": "other"}},
                ]
            },
        ]
    }
    first = _datums(tree, a, b, c)
    assert _files(first) == [["/1", "/x"], ["/1", "/y"], ["/2", "/x"], ["/2", "/y"]]
    assert [d.id for d in _datums(tree, c, b, a)] == [d.id for d in first]


def test_datum_id_is_about_names_paths_and_content() -> None:
    tree = {"pfs": {"repo": "data", "glob": "/*"}}
    base = {d.inputs[0].matches[0]: d.id for d in _datums(tree, DATA)}
    # another commit with the same content: same ids
    other_commit = dataclasses.replace(DATA, commit_id="data-c2")
    assert {d.inputs[0].matches[0]: d.id for d in _datums(tree, other_commit)} == base
    # content of one file changed: only that datum's id changes
    changed = commit("data", {**DATA_FILES, "/b.txt": "B2"}, commit_id="data-c3")
    ids = {d.inputs[0].matches[0]: d.id for d in _datums(tree, changed)}
    assert {k for k in ids if ids[k] != base[k]} == {"/b.txt"}
    # a file moved: the id of its datum changes
    moved_files = {k: v for k, v in DATA_FILES.items() if k != "/dir/x.csv"}
    moved = commit("data", {**moved_files, "/dir/x2.csv": "X"})
    assert {d.inputs[0].matches[0]: d.id for d in _datums(tree, moved)}["/dir"] != base["/dir"]
    # same content under another input name: different id
    renamed = _datums({"pfs": {"repo": "data", "glob": "/*", "name": "other"}}, DATA)
    assert renamed[0].id != base["/a.txt"]


def test_datum_hash_follows_the_transform() -> None:
    spec = _spec({"pfs": {"repo": "data", "glob": "/*"}})
    datum = compute_datums(spec.input, {DATA.key: DATA})[0]
    h = datum_hash(datum, spec.transform)
    assert h == datum_hash(datum.id, spec.transform)
    t = spec.transform
    for changed in (
        dataclasses.replace(t, image="pfsfs/python"),
        dataclasses.replace(t, cmd=("sh", "-c", "true")),
        dataclasses.replace(t, stdin=("echo",)),
        dataclasses.replace(t, env=(("A", "1"),)),
        dataclasses.replace(t, working_dir="/w"),
        dataclasses.replace(t, user="1000"),
        dataclasses.replace(t, network=True),
    ):
        assert datum_hash(datum, changed) != h, changed
    assert datum_hash(datum, t, image_id="sha256:1") != h
    # what does not change outputs does not change the hash
    other = _spec(
        {"pfs": {"repo": "data", "glob": "/*"}},
        parallelism=8,
        datum_tries=1,
        datum_timeout="5m",
        resource_limits={"cpu": 2, "memory": "1Gi"},
        description="new words",
    )
    assert datum_hash(datum, other.transform) == h
    assert compute_datums(other.input, {DATA.key: DATA})[0].id == datum.id


def test_missing_input_commit_is_an_error() -> None:
    spec = _spec({"pfs": {"repo": "data", "glob": "/*"}})
    with pytest.raises(ValueError, match="no input commit given for data@master"):
        compute_datums(spec.input, {})


def test_resolve_inputs_and_provenance() -> None:
    class Source:
        def __init__(self, commits: list[InputCommit]) -> None:
            self.commits = {c.key: c for c in commits}

        def input_commit(self, repo: str, branch: str) -> InputCommit | None:
            return self.commits.get((repo, branch))

    spec = _spec({"cross": [{"pfs": {"repo": "l"}}, {"pfs": {"repo": "r", "branch": "dev"}}]})
    left, right = commit("l", {"/1": "1"}), commit("r", {"/2": "2"}, branch="dev")
    commits = resolve_inputs(spec.input_branches(), Source([left, right]))
    assert commits == {("l", "master"): left, ("r", "dev"): right}
    assert provenance(commits) == [("l", "master", "l-c1"), ("r", "dev", "r-c1")]
    assert resolve_inputs(spec.input_branches(), Source([left])) is None


def test_input_commit_refuses_bad_files() -> None:
    with pytest.raises(ValueError, match="duplicate file"):
        InputCommit.of("r", "master", "c", [InputFile("/a", "1", 1), InputFile("/a", "2", 1)])
    with pytest.raises(ValueError, match="bad file path"):
        InputCommit.of("r", "master", "c", [InputFile("a", "1", 1)])


def test_many_files_are_fast() -> None:
    files = {f"/d{i % 1000:04d}/f{i:06d}": str(i) for i in range(100_000)}
    big = commit("data", files)
    start = time.monotonic()
    datums = _datums({"pfs": {"repo": "data", "glob": "/*"}}, big)
    per_file = _datums({"pfs": {"repo": "data", "glob": "/*/*"}}, big)
    elapsed = time.monotonic() - start
    assert len(datums) == 1000 and all(len(d.inputs[0].files) == 100 for d in datums)
    assert len(per_file) == 100_000
    assert elapsed < 20, elapsed
