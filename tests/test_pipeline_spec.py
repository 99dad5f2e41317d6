"""Pipeline spec parsing, validation, normalisation, hashing and the DAG checks."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from pfsfs.errors import InvalidInput
from pfsfs.pipeline.inputs import GlobError, compile_glob
from pfsfs.pipeline.spec import (
    CrossInput,
    GroupInput,
    JoinInput,
    PfsInput,
    UnionInput,
    check_dag,
    parse_cpu,
    parse_duration,
    parse_memory,
    parse_spec,
    parse_spec_dict,
    spec_hash,
    spec_to_dict,
)

from .pipeline_fixtures import spec_dict

FULL_YAML = """
pipeline:
  name: features
description: tf-idf per document
input:
  cross:
    - pfs: {repo: docs, glob: "/*", branch: dev}
    - union:
        - pfs: {repo: vocab, glob: "/", name: words}
        - pfs: {repo: stopwords, glob: "/*.txt", name: words}
transform:
  image: pfsfs/python
  cmd: [python3, /code/run.py]
  stdin: []
  env: {MIN_DF: 5, VERBOSE: true, NAME: x}
  working_dir: /code
  user: "1000:1000"
parallelism: 4
datum_tries: 2
datum_timeout: 1m30s
resource_limits: {cpu: 500m, memory: 512Mi}
runner: podman
"""


def test_full_spec_parses() -> None:
    spec = parse_spec(FULL_YAML)
    assert spec.name == "features"
    assert spec.description == "tf-idf per document"
    assert isinstance(spec.input, CrossInput)
    docs, union = spec.input.inputs
    assert docs == PfsInput(repo="docs", name="docs", branch="dev", glob="/*")
    assert isinstance(union, UnionInput)
    assert [p.name for p in spec.pfs_inputs()] == ["docs", "words", "words"]
    assert spec.input_branches() == [("docs", "dev"), ("stopwords", "master"), ("vocab", "master")]
    t = spec.transform
    assert t.cmd == ("python3", "/code/run.py")
    assert t.env_dict == {"MIN_DF": "5", "VERBOSE": "true", "NAME": "x"}
    assert (t.working_dir, t.user, t.network) == ("/code", "1000:1000", False)
    assert (spec.parallelism, spec.datum_tries, spec.datum_timeout) == (4, 2, 90.0)
    assert spec.resource_limits.cpu == 0.5
    assert spec.resource_limits.memory == 512 * 2**20


def test_defaults_and_json() -> None:
    spec = parse_spec(json.dumps(spec_dict()))
    pfs = spec.input
    assert pfs == PfsInput(repo="data", name="data", branch="master", glob="/*")
    assert (spec.parallelism, spec.datum_tries, spec.datum_timeout, spec.runner) == (
        1,
        3,
        None,
        "podman",
    )
    assert spec.output_branch == "master"
    assert spec.resource_limits.cpu is None and spec.resource_limits.memory is None


def test_stdin_without_cmd_runs_sh_and_parallelism_spec() -> None:
    spec = parse_spec_dict(
        spec_dict(
            transform={"image": "i", "stdin": ["echo hi"]},
            parallelism_spec={"constant": 3},
        )
    )
    assert spec.transform.cmd == ("sh",)
    assert spec.transform.stdin == ("echo hi",)
    assert spec.parallelism == 3


def test_join_and_group_parse() -> None:
    spec = parse_spec_dict(
        spec_dict(
            input={
                "join": [
                    {"pfs": {"repo": "a", "glob": "/(*).txt", "join_on": "$1"}},
                    {
                        "pfs": {
                            "repo": "b",
                            "glob": "/(*)-(*).csv",
                            "join_on": "$2",
                            "outer_join": True,
                        }
                    },
                ]
            }
        )
    )
    assert isinstance(spec.input, JoinInput)
    assert spec.input.inputs[1].outer_join and spec.input.inputs[1].join_on == "$2"
    spec = parse_spec_dict(
        spec_dict(input={"group": [{"pfs": {"repo": "a", "glob": "/(*)/*", "group_by": "$1"}}]})
    )
    assert isinstance(spec.input, GroupInput)


def test_local_runner_needs_no_image() -> None:
    spec = parse_spec_dict(spec_dict(runner="local", transform={"cmd": ["true"]}))
    assert spec.runner == "local" and spec.transform.image is None


def _set(d: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Copy of `d` with the value at `a.b[1].c` set (or deleted when value is DELETE)."""
    d = copy.deepcopy(d)
    parts = dotted.replace("[", ".[").split(".")  # "a[1].b" -> a, [1], b
    node: Any = d
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    key: Any = int(last[1:-1]) if last.startswith("[") else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return d


DELETE = object()
CROSS = spec_dict(
    input={
        "cross": [
            {"pfs": {"repo": "a", "glob": "/*"}},
            {"pfs": {"repo": "b", "glob": "/*"}},
        ]
    }
)

BAD = [
    # (field to change, new value, expected message start)
    ("paralelism", 2, "paralelism: unknown field"),
    ("input.cross[1].pfs.globb", "/*", "input.cross[1].pfs.globb: unknown field"),
    ("transform.command", ["x"], "transform.command: unknown field"),
    ("pipeline.nam", "x", "pipeline.nam: unknown field"),
    ("resource_limits", {"gpu": 1}, "resource_limits.gpu: unknown field"),
    ("input.cross[0].pfs.repo", DELETE, "input.cross[0].pfs.repo: required"),
    ("input.cross[1].pfs.glob", "data/*", "input.cross[1].pfs.glob: bad glob 'data/*'"),
    ("input.cross[1].pfs.glob", "/[a-", "input.cross[1].pfs.glob: bad glob"),
    ("input.cross[1].pfs.glob", "/(*", "input.cross[1].pfs.glob: bad glob"),
    ("input.cross[1].pfs.glob", "/*)", "input.cross[1].pfs.glob: bad glob"),
    ("input.cross[1].pfs.glob", "/{a,b}", "input.cross[1].pfs.glob: bad glob"),
    ("input.cross[1].pfs.glob", "/a//b", "input.cross[1].pfs.glob: bad glob"),
    ("input.cross[1].pfs.glob", "/***", "input.cross[1].pfs.glob: bad glob"),
    ("input.cross[1].pfs.glob", "/[]", "input.cross[1].pfs.glob: bad glob"),
    ("input.cross[1].pfs.glob", 5, "input.cross[1].pfs.glob: must be a string"),
    ("input.cross[1].pfs.repo", "a", "input.cross[1].pfs.name: duplicate input name 'a'"),
    ("input.cross[1].pfs.name", "out", "input.cross[1].pfs.name: 'out' is reserved"),
    ("input.cross[1].pfs.repo", "bad/name", "input.cross[1].pfs.repo: bad repo name"),
    ("input.cross[1].pfs.join_on", "$1", "input.cross[1].pfs.join_on: only allowed in a join"),
    ("input.cross", [], "input.cross: must be a non-empty list"),
    ("input.union", [], "input: needs exactly one of"),
    ("runner", "docker", "runner: unknown runner 'docker'"),
    ("datum_timeout", "5 minutes", "datum_timeout: bad duration"),
    ("datum_timeout", -1, "datum_timeout: must be a positive duration"),
    ("datum_timeout", "1x", "datum_timeout: bad duration"),
    ("transform.cmd", DELETE, "transform.cmd: required"),
    ("transform.cmd", "echo hi", "transform.cmd: must be a list of strings"),
    ("transform.cmd", [], "transform.cmd: must not be empty"),
    ("transform.cmd", ["echo", None], "transform.cmd[1]: must be a string"),
    ("transform.image", DELETE, "transform.image: required by the podman runner"),
    ("transform.env", {"1BAD": "x"}, "transform.env.1BAD: bad environment variable name"),
    ("transform.env", {"PFS_OUT": "x"}, "transform.env.PFS_OUT: PFS_* variables"),
    ("transform.working_dir", "code", "transform.working_dir: must be an absolute path"),
    ("transform.network", "yes", "transform.network: must be true or false"),
    ("transform", DELETE, "transform.cmd: required"),
    ("parallelism", 0, "parallelism: must be at least 1"),
    ("parallelism", True, "parallelism: must be an integer"),
    ("datum_tries", "3", "datum_tries: must be an integer"),
    ("resource_limits", {"memory": "512m"}, "resource_limits.memory: bad memory size"),
    ("resource_limits", {"cpu": "lots"}, "resource_limits.cpu: bad cpu"),
    ("pipeline.name", "a b", "pipeline.name: bad pipeline name"),
    ("pipeline", DELETE, "pipeline.name: required"),
    ("input", DELETE, "input: required"),
    ("input", {"pfs": {"repo": "a"}, "cross": []}, "input: needs exactly one of"),
    ("input", ["x"], "input: must be a mapping"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD, ids=[b[2][:40] for b in BAD])
def test_bad_specs_name_the_field(field: str, value: Any, message: str) -> None:
    base = CROSS if field.startswith("input.cross") else spec_dict()
    with pytest.raises(InvalidInput) as exc:
        parse_spec_dict(_set(base, field, value))
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)
    assert exc.value.exit_code == 2


def test_bad_join_and_group() -> None:
    def join(*pfs: dict[str, Any]) -> dict[str, Any]:
        return spec_dict(input={"join": [{"pfs": p} for p in pfs]})

    cases = [
        (join({"repo": "a", "glob": "/(*)"}), "input.join[0].pfs.join_on: required"),
        (
            join({"repo": "a", "glob": "/(*)", "join_on": "$2"}),
            "input.join[0].pfs.join_on: $2 but the glob '/(*)' has 1 capture groups",
        ),
        (
            spec_dict(input={"join": [{"cross": [{"pfs": {"repo": "a"}}]}]}),
            "input.join[0].cross: a join can only contain pfs inputs",
        ),
        (
            spec_dict(input={"group": [{"pfs": {"repo": "a", "glob": "/*"}}]}),
            "input.group[0].pfs.group_by: required",
        ),
        (
            spec_dict(input={"pfs": {"repo": "a", "group_by": "$1"}}),
            "input.pfs.group_by: only allowed in a group input",
        ),
        (
            spec_dict(input={"pfs": {"repo": "a", "outer_join": True}}),
            "input.pfs.outer_join: only allowed in a join input",
        ),
        (
            spec_dict(
                input={
                    "cross": [
                        {"pfs": {"repo": "a", "name": "x-y"}},
                        {"pfs": {"repo": "b", "name": "x_y"}},
                    ]
                }
            ),
            "input.cross[1].pfs.name: input name 'x_y' clashes with 'x-y'",
        ),
        (
            spec_dict(
                input={
                    "cross": [
                        {"union": [{"pfs": {"repo": "a", "name": "x"}}]},
                        {"pfs": {"repo": "b", "name": "x"}},
                    ]
                }
            ),
            "input.cross[1].pfs.name: duplicate input name 'x'; first at input.cross[0]",
        ),
    ]
    for raw, message in cases:
        with pytest.raises(InvalidInput) as exc:
            parse_spec_dict(raw)
        assert str(exc.value).startswith(message), str(exc.value)


def test_union_inputs_may_share_a_name() -> None:
    spec = parse_spec_dict(
        spec_dict(
            input={
                "union": [
                    {"pfs": {"repo": "a", "name": "x"}},
                    {"pfs": {"repo": "b", "name": "x"}},
                ]
            }
        )
    )
    assert [p.repo for p in spec.pfs_inputs()] == ["a", "b"]


def test_invalid_yaml_and_empty() -> None:
    with pytest.raises(InvalidInput, match=r"^spec: not valid YAML or JSON \(line"):
        parse_spec("pipeline: {name: [x\n")
    with pytest.raises(InvalidInput, match="^spec: empty"):
        parse_spec("")
    with pytest.raises(InvalidInput, match="^spec: must be a mapping"):
        parse_spec("- a\n- b\n")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), (45, 45), ("45", 45), (2.5, 2.5)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text, "t") == pytest.approx(seconds)


def test_quantities() -> None:
    assert parse_memory("512Mi", "m") == 512 * 2**20
    assert parse_memory("1G", "m") == 10**9
    assert parse_memory("1.5Gi", "m") == int(1.5 * 2**30)
    assert parse_memory(4096, "m") == 4096
    assert parse_cpu("500m", "c") == 0.5
    assert parse_cpu(2, "c") == 2.0
    assert parse_cpu("1.5", "c") == 1.5


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("/", "/", True),
        ("/*", "/a", True),
        ("/*", "/a/b", False),
        ("/*/*", "/a/b", True),
        ("/**", "/a/b/c", True),
        ("/**.txt", "/a/b/c.txt", True),
        ("/?.txt", "/a.txt", True),
        ("/?.txt", "/ab.txt", False),
        ("/[a-c]*", "/b1", True),
        ("/[a-c]*", "/d1", False),
        ("/[!a-c]*", "/d1", True),
        ("/(*).txt", "/x.txt", True),
        ("/a\\*", "/a*", True),
        ("/a\\*", "/ab", False),
        ("/a.b", "/axb", False),
    ],
)
def test_glob_matching(glob: str, path: str, matches: bool) -> None:
    regex, _ = compile_glob(glob)
    assert (regex.fullmatch(path) is not None) is matches


def test_glob_groups() -> None:
    regex, groups = compile_glob("/(*)-(*).txt")
    assert groups == 2
    m = regex.fullmatch("/a-b.txt")
    assert m is not None and m.groups() == ("a", "b")
    with pytest.raises(GlobError):
        compile_glob("/[z-a]")


def test_roundtrip_and_hash() -> None:
    spec = parse_spec(FULL_YAML)
    again = parse_spec_dict(spec_to_dict(spec))
    assert again == spec
    assert spec_hash(again) == spec_hash(spec)
    changed = parse_spec(FULL_YAML.replace("/code/run.py", "/code/run2.py"))
    assert spec_hash(changed) != spec_hash(spec)
    for raw in (
        spec_dict(input={"join": [{"pfs": {"repo": "a", "glob": "/(*)", "join_on": "$1"}}]}),
        spec_dict(input={"group": [{"pfs": {"repo": "a", "glob": "/(*)", "group_by": "$1"}}]}),
    ):
        s = parse_spec_dict(raw)
        assert parse_spec_dict(spec_to_dict(s)) == s


def _pipe(name: str, *repos: str):
    inputs = [{"pfs": {"repo": r, "name": f"in{i}"}} for i, r in enumerate(repos)]
    raw = spec_dict(pipeline={"name": name})
    raw["input"] = inputs[0] if len(inputs) == 1 else {"cross": inputs}
    return parse_spec_dict(raw)


def test_check_dag() -> None:
    a = _pipe("a", "raw")
    b = _pipe("b", "a")
    c = _pipe("c", "b")
    check_dag(_pipe("d", "c", "raw"), [a, b, c])  # a DAG is fine
    check_dag(_pipe("b", "raw"), [a, b, c])  # updating b
    with pytest.raises(InvalidInput, match=r"^input.pfs.repo: pipeline 'x' cannot read its own"):
        check_dag(_pipe("x", "x"), [])
    with pytest.raises(InvalidInput) as exc:  # updating a to read c
        check_dag(_pipe("a", "c"), [a, b, c])
    assert str(exc.value) == "input.pfs.repo: pipelines would form a cycle: a -> b -> c -> a"
    with pytest.raises(InvalidInput) as exc:
        check_dag(_pipe("b", "raw", "c"), [a, b, c])
    assert str(exc.value) == "input.cross[1].pfs.repo: pipelines would form a cycle: b -> c -> b"
    with pytest.raises(InvalidInput, match=r"^pipeline.name: repo 'a' already exists as an input"):
        check_dag(_pipe("a", "raw"), [b])  # 'a' is a plain repo that b reads
    with pytest.raises(InvalidInput, match=r"^pipeline.name: repo 'raw' already exists"):
        check_dag(_pipe("raw", "x"), [], existing_repos=["raw", "x"])
