"""What makes the trials of one study comparable: the spec's fingerprint, its hash and the keys two differ in."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from archsearch.spec.load import to_dict
from archsearch.spec.model import Spec

#: Spec keys that do not change what a trial means (where the data sit, how many loader processes, the memory
#: layout training runs in).
_NOT_COMPARED = {("data", "root"), ("data", "cache_dir"), ("proxy", "workers"), ("proxy", "memory_format")}

#: Proxy keys added after studies and calibrations were stored, with the value that behaves as before: compared
#: only when they differ from it, so that stored studies and calibration runs stay comparable.
_ADDED_PROXY_KEYS: dict[str, Any] = {"common_random_numbers": False, "ema_decay": 0.0}


def comparable_proxy(proxy: dict[str, Any]) -> dict[str, Any]:
    """The ``proxy`` section (as :func:`to_dict` gives it) without the memory layout (an execution detail) and
    without the keys added later that hold their old behaviour."""
    return {
        k: v
        for k, v in proxy.items()
        if k != "memory_format" and not (k in _ADDED_PROXY_KEYS and v == _ADDED_PROXY_KEYS[k])
    }


def fingerprint(spec: Spec) -> dict[str, Any]:
    """What makes trials of a study comparable: builder, fixed knobs, classes, data, proxy budget, target,
    objectives (JSON data) and, when on, ``search.fidelity``; a space over several builders: each builder's fixed
    knobs."""
    d = to_dict(spec)
    keys = ("builder", "fixed", "num_classes", "data", "proxy", "target", "objectives")
    out = {k: d[k] for k in keys if k in d}
    if "builders" in d:
        out["builders"] = {b: s["fixed"] for b, s in d["builders"].items()}
    for section, key in _NOT_COMPARED:
        out[section].pop(key, None)
    out["proxy"] = comparable_proxy(out["proxy"])
    if d["search"].get("fidelity") is not None:  # stopped trials hold rung values (absent: as before)
        out["fidelity"] = d["search"]["fidelity"]
    return json.loads(json.dumps(out, sort_keys=True))


def fingerprint_hash(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, as ``key old → new``."""
    a, b = _flat(old), _flat(new)
    return [
        f"{k} {json.dumps(a.get(k))} → {json.dumps(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]
