"""The YAML spec: validated, frozen models of every section, knob declarations, the metrics a trial records, and
the fingerprint that says when two studies' trials are comparable."""

from archsearch.spec.file import BASE_KEY, load_yaml, parse_assignment
from archsearch.spec.load import json_schema, load, parse, parse_data, to_dict, validate_storage_url
from archsearch.spec.model import Spec
from archsearch.spec.sections import (
    DATA_NAMES,
    GATE_METRICS,
    METRICS,
    Bound,
    BuilderSpace,
    DataSpec,
    FidelitySpec,
    Objective,
    ProxySpec,
    Row,
    SearchSpec,
    TargetSpec,
)

__all__ = [
    "BASE_KEY",
    "DATA_NAMES",
    "GATE_METRICS",
    "METRICS",
    "Bound",
    "BuilderSpace",
    "DataSpec",
    "FidelitySpec",
    "Objective",
    "ProxySpec",
    "Row",
    "SearchSpec",
    "Spec",
    "TargetSpec",
    "json_schema",
    "load",
    "load_yaml",
    "parse",
    "parse_assignment",
    "parse_data",
    "to_dict",
    "validate_storage_url",
]
