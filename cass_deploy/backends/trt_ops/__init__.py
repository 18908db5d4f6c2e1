"""TensorRT's ONNX operator support per version, as data (SPEC §7c).

Each ``trt_*.json`` beside this module is NVIDIA's onnx-tensorrt ``docs/operators.md`` of one release
branch, parsed by :func:`parse_operators_md` (``tools/regen_trt_ops.py`` regenerates them) with its
source URL, branch, commit and date. ``dla_layers.json`` is the DLA supported-layer list (TensorRT
documentation), mapped onto ONNX ops. Nothing here imports torch or TensorRT.

A row of the matrix becomes ``{"supported": bool, "types": [...], "restrictions": str, "rules": {...}}``:
``rules`` is what :func:`rules_from` could read off the restrictions text so that ``check`` can test
it on a graph (inputs that must be initializers or build-time constants, attribute values, an input
bound such as TopK's ``K < 3840``, inputs that must have static shapes); the text is kept verbatim for
everything else.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cass_deploy.errors import InputError

DATA_DIR = Path(__file__).resolve().parent

#: obvious typos in the published tables, read as what they mean (recorded in each file's "normalised")
TYPE_FIXES = {"INF64": "INT64", "FLOAT32": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16"}

_HEADER = re.compile(r"TensorRT\s+([0-9.]+)\s+supports operators[^.]*?opset\s+(\d+)\s+to opset\s+(\d+)", re.I)
_CONST_PHRASE = re.compile(
    r"must be (an initializer|initializers|a constant tensor|a build-time constant|resolvable to a constant)"
)
#: "Supported <what>: `a`, `b`" sentences (Resize) -> the attribute they constrain
ATTRIBUTE_LISTS = {
    "resize transformation modes": "coordinate_transformation_mode",
    "resize modes": "mode",
    "nearest modes": "nearest_mode",
    "aspect ratio policy": "keep_aspect_ratio_policy",
}
_TICKED = re.compile(r"`\s*([A-Za-z_][A-Za-z0-9_]*)\s*`")


@dataclass(frozen=True)
class OpMatrix:
    """One version's operator matrix: ``operators`` maps an ONNX op type to its row."""

    name: str
    tensorrt: str
    source: Mapping[str, Any]
    operators: Mapping[str, Mapping[str, Any]]
    data_types: tuple[str, ...]

    def row(self, op: str) -> Mapping[str, Any] | None:
        return self.operators.get(op)

    @property
    def unsupported(self) -> frozenset[str]:
        """Ops the matrix marks N."""
        return frozenset(op for op, row in self.operators.items() if not row["supported"])

    @property
    def label(self) -> str:
        """Short name: the branch (``onnx-tensorrt 10.1-GA``), else the version its header states."""
        branch = self.source.get("branch")
        return f"onnx-tensorrt {branch}" if branch else f"TensorRT {self.tensorrt}"

    def cite(self) -> str:
        """``onnx-tensorrt <branch> docs/operators.md (<commit>, <date>)``: where the rows come from."""
        s = self.source
        if not s.get("branch"):
            return f"onnx-tensorrt docs/operators.md of TensorRT {self.tensorrt} (branch, commit and date not recorded)"
        return (
            f"onnx-tensorrt {s['branch']} docs/operators.md ({(s.get('commit') or '?')[:12]}, {s.get('date') or '?'})"
        )


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"<br\s*/?>|\.\s+|\.$", text) if s.strip()]


def rules_from(restrictions: str) -> dict[str, Any]:
    """What a restrictions cell states that a graph check can test, e.g. for TopK in 10.x
    (``"`sorted` must be 1. `K` input must be less than 3840."``) ``{"attribute_equals": {"sorted": 1},
    "input_less_than": {"K": 3840}}``.

    Keys: ``constant_inputs`` (name -> ``"initializer"`` or ``"build-time constant"``),
    ``attribute_equals``, ``attribute_in`` (allowed string values), ``input_less_than``, ``all_ones``
    (attributes that must be empty or all ones), ``unsupported_attributes`` / ``unsupported_inputs`` /
    ``unsupported_outputs``, ``input_ranks`` (``2D or 3D ... only``), ``first_output_only``,
    ``static_input_shapes``; and ``unchecked``: the sentences none of these covers, verbatim."""
    rules: dict[str, Any] = {}
    for sentence in _sentences(restrictions):
        ticked = _TICKED.findall(sentence)
        m = _CONST_PHRASE.search(sentence)
        if m:
            kind = "initializer" if "initializer" in m.group(1) else "build-time constant"
            for name in _TICKED.findall(sentence[: m.start()]):
                rules.setdefault("constant_inputs", {})[name] = kind
        elif m := re.fullmatch(r"`\s*(\w+)\s*`(?: attribute)? must be (-?\d+|zero)", sentence):
            rules.setdefault("attribute_equals", {})[m.group(1)] = 0 if m.group(2) == "zero" else int(m.group(2))
        elif (m := re.fullmatch(r"Supported ([\w ]+?):\s*(.+?)\.?", sentence)) and m.group(1) in ATTRIBUTE_LISTS:
            rules.setdefault("attribute_in", {})[ATTRIBUTE_LISTS[m.group(1)]] = _TICKED.findall(m.group(2))
        elif m := re.fullmatch(r"`\s*(\w+)\s*` other than `\s*(\w+)\s*` is not supported", sentence):
            rules.setdefault("attribute_in", {})[m.group(1)] = [m.group(2)]
        elif re.fullmatch(r"antialiasing is not supported", sentence, re.I):
            rules.setdefault("attribute_equals", {})["antialias"] = 0
        elif m := re.fullmatch(r"`\s*(\w+)\s*`(?: input)? must be less than (\d+)", sentence):
            rules.setdefault("input_less_than", {})[m.group(1)] = int(m.group(2))
        elif ticked and re.search(r"must be empty or all ones$", sentence):
            rules.setdefault("all_ones", []).extend(ticked)
        elif ticked and (
            m := re.search(
                r"(attributes?|inputs?|outputs?)(?: tensors?)? (?:(?:are|is) )?(?:not )?(?:unsupported|supported)$",
                sentence,
            )
        ):
            kind = m.group(1).rstrip("s") + "s"
            rules.setdefault(f"unsupported_{kind}", []).extend(ticked)
        elif re.fullmatch(r"only the first output `\w+` is supported", sentence, re.I):
            rules["first_output_only"] = True
        elif re.fullmatch(r"2D or 3D \w+ only", sentence, re.I):
            rules["input_ranks"] = [4, 5]
        elif re.fullmatch(r"dynamic input shapes are unsupported", sentence, re.I):
            rules["static_input_shapes"] = True
        else:
            rules.setdefault("unchecked", []).append(sentence)
    return rules


def _types(cell: str, op: str, fixes: list[str]) -> list[str]:
    out = []
    for raw in cell.split(","):
        t = raw.strip().upper()
        if not t:
            continue
        if t in TYPE_FIXES:
            fixes.append(f"{op}: type {t!r} read as {TYPE_FIXES[t]}")
            t = TYPE_FIXES[t]
        out.append(t)
    return out


def parse_operators_md(text: str) -> dict[str, Any]:
    """Parse onnx-tensorrt ``docs/operators.md`` (the 8.x-11.x layout: ``| Operator | Supported |
    Supported Types | Restrictions |``) into ``{"tensorrt", "opset_range", "header", "data_types",
    "notes", "operators", "normalised"}``. Raises :class:`InputError` when no such table is found."""
    header = _HEADER.search(text)
    types_line = re.search(r"following ONNX data types:\s*(.+)", text)
    data_types = [
        t.strip().removeprefix("and ").strip() for t in (types_line.group(1) if types_line else "").split(",")
    ]
    fixes: list[str] = []
    operators: dict[str, Any] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or cells[0] in ("Operator", "") or set(cells[0]) <= {"-"}:
            continue
        op, flag = cells[0], cells[1]
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", op):
            continue
        restrictions = cells[3] if len(cells) > 3 else ""
        if not flag.upper().startswith("Y") and len(cells) > 2 and not restrictions:
            restrictions = cells[2]  # an "N" row whose only text sits in the types column
        row = {
            "supported": flag.upper().startswith("Y"),
            "types": _types(cells[2], op, fixes) if len(cells) > 2 and flag.upper().startswith("Y") else [],
            "restrictions": restrictions,
        }
        if "EXPERIMENTAL" in flag.upper():
            row["experimental"] = True
        rules = rules_from(restrictions) if flag.upper().startswith("Y") else {}
        if rules:
            row["rules"] = rules
        operators[op] = row
    if not operators:
        raise InputError("no operator support matrix found (expected '| Operator | Supported | ...' rows)")
    return {
        "tensorrt": header.group(1) if header else None,
        "opset_range": [int(header.group(2)), int(header.group(3))] if header else None,
        "header": header.group(0) if header else None,
        "data_types": [TYPE_FIXES.get(t.upper(), t.upper()) for t in data_types if t],
        "notes": [ln.lstrip("> ").strip() for ln in text.splitlines() if ln.startswith("> Note")],
        "operators": dict(sorted(operators.items())),
        "normalised": fixes,
    }


@functools.cache
def load_matrix(name: str) -> OpMatrix:
    """The matrix stored as ``<name>.json`` here (e.g. ``trt_10_15``)."""
    path = DATA_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in DATA_DIR.glob("trt_*.json")))
        raise InputError(f"no TensorRT operator matrix {name!r}; stored: {known}")
    data = json.loads(path.read_text())
    return OpMatrix(
        name=name,
        tensorrt=data["tensorrt"],
        source=data["source"],
        operators=data["operators"],
        data_types=tuple(data.get("data_types") or ()),
    )


@functools.cache
def dla_layers() -> Mapping[str, Any]:
    """``dla_layers.json``: ``{"source": ..., "general": [...], "ops": {onnx_op: layer row text}}``."""
    return json.loads((DATA_DIR / "dla_layers.json").read_text())
