"""Pipelines: specs, datums and transform runners.

`spec` parses and validates pipeline specs; `inputs` is the boundary with the storage layer
(input commits as lists of files); `datums` splits input commits into datums and hashes them;
`runners` runs one datum's transform in podman or a local (bubblewrap) sandbox.
"""

from __future__ import annotations

from .datums import Datum, DatumInput, compute_datums, datum_hash, datum_id
from .inputs import InputCommit, InputFile, InputSource, provenance, resolve_inputs
from .spec import (
    PipelineSpec,
    Transform,
    check_dag,
    load_spec,
    parse_spec,
    parse_spec_dict,
    spec_hash,
    spec_to_dict,
)

__all__ = [
    "Datum",
    "DatumInput",
    "InputCommit",
    "InputFile",
    "InputSource",
    "PipelineSpec",
    "Transform",
    "check_dag",
    "compute_datums",
    "datum_hash",
    "datum_id",
    "load_spec",
    "parse_spec",
    "parse_spec_dict",
    "provenance",
    "resolve_inputs",
    "spec_hash",
    "spec_to_dict",
]
