"""The YAML spec: validated, frozen models of every section, knob declarations, the metrics a trial records, and
the fingerprint that says when two studies' trials are comparable."""

from archsearch.spec.spec import (
    DATA_NAMES,
    DataSpec,
    Objective,
    ProxySpec,
    Spec,
    TargetSpec,
    json_schema,
    load,
    parse,
    parse_assignment,
    parse_data,
    to_dict,
    validate_storage_url,
)

__all__ = [
    "DATA_NAMES",
    "DataSpec",
    "Objective",
    "ProxySpec",
    "Spec",
    "TargetSpec",
    "json_schema",
    "load",
    "parse",
    "parse_assignment",
    "parse_data",
    "to_dict",
    "validate_storage_url",
]
