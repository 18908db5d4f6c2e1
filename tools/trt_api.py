"""TensorRT API conformance: the names our builder and runner use, against the real bindings.

TensorRT's libraries cannot be installed where this project is developed, but the
``tensorrt-cu12-bindings`` wheels (about 1.3 MB) download from PyPI, and their
``tensorrt_bindings/tensorrt.so`` holds the pybind11 name of every class, method, property and
enum value as a C string. This tool

1. ``fetch``: downloads the wheels of the versions we support with ``pip download --no-deps``
   (10.3 = JetPack 6.2, the newest 10.x and the newest 11.x; pip's cache answers repeats);
2. ``extract``: reads the identifiers of the ``.so`` (as ``strings`` would) plus the names the
   wheel's Python files define (``nptype``, ``__version__``) into ``tests/fixtures/trt_names/V.txt``;
3. ``check`` / ``table``: collects the TensorRT names our code uses **by static analysis** of the
   TensorRT modules (every attribute taken from a value that comes from ``tensorrt``, followed
   through assignments, calls, returns and dataclass fields) plus every ``Enum.MEMBER`` a build
   plan can resolve (:func:`cass_deploy.export.tensorrt_build.plan_members` over
   :func:`~cass_deploy.export.tensorrt_build.enumerate_plans` of the version's major), and checks
   each against each version's names.

A name is ``present`` when a string equals it, ``merged`` when it only ends a longer string (the
linker stores a literal that is the tail of another once: ``INT8`` inside ``UINT8``, ``Logger``
inside ``ILogger``; present, but the strings cannot say in which class), ``absent`` otherwise.
A plan member absent from a version whose major never plans it is ``guarded``.

    python tools/trt_api.py fetch [--dir DIR]       # download the wheels (default: the cache dir)
    python tools/trt_api.py extract [--dir DIR]     # rewrite tests/fixtures/trt_names/*.txt
    python tools/trt_api.py table                   # name x version table (markdown), exit 1 on a violation

Imports no TensorRT and no torch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cass_deploy.export.tensorrt_build import PLAN_ENUMS, enumerate_plans, plan_members

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "trt_names"
#: the versions we claim to support: JetPack 6.2's TensorRT, the newest 10.x, the newest 11.x on PyPI
VERSIONS = ("10.3.0", "10.16.1.11", "11.4.0.106")
DISTRIBUTION = "tensorrt-cu12-bindings"
#: where ``fetch`` puts the wheels and the test looks for them (``CASS_TRT_WHEELS`` overrides)
WHEEL_DIR = Path(os.environ.get("CASS_TRT_WHEELS", Path.home() / ".cache" / "cass-deploy" / "tensorrt-bindings"))
#: the modules that call TensorRT (paths relative to the repository)
TRT_MODULES = (
    "cass_deploy/export/tensorrt_build.py",
    "cass_deploy/runtime/trt_engine.py",
    "cass_deploy/runtime/trt_runner.py",
)

_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]+")
#: the end of a C string: printable characters ending in an identifier, before the NUL
_END = re.compile(rb"([\x20-\x7e]*?)([A-Za-z_][A-Za-z0-9_]+)$")


# --------------------------------------------------------------------------- the real names
def wheel_path(version: str, directory: Path = WHEEL_DIR) -> Path | None:
    """The downloaded bindings wheel of ``version`` in ``directory`` (any platform tag), or None."""
    found = sorted(Path(directory).glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    return found[0] if found else None


def fetch(versions: Sequence[str] = VERSIONS, directory: Path = WHEEL_DIR) -> list[Path]:
    """``pip download --no-deps`` the bindings wheels (Linux x86_64, CPython 3.11) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for version in versions:
        if wheel_path(version, directory) is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            cmd += ["--python-version", "3.11", "--implementation", "cp"]
            for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
                cmd += ["--platform", tag]
            subprocess.run([*cmd, f"{DISTRIBUTION}=={version}", "-d", str(directory)], check=True)
        path = wheel_path(version, directory)
        if path is None:
            raise SystemExit(f"pip downloaded no {DISTRIBUTION} {version} wheel into {directory}")
        out.append(path)
    return out


def extract_names(wheel: Path) -> set[str]:
    """Identifiers declared by a bindings wheel: every identifier-shaped C string of
    ``tensorrt_bindings/tensorrt.so`` (mangled C++ symbols ``_Z...`` left out), the trailing
    identifier of every other string prefixed ``~`` (the linker may store a name as the tail of
    any longer literal: ``DataType`` inside ``nvinfer1::DataType``), and every name the wheel's
    ``tensorrt_bindings/*.py`` define at module or class level."""
    names: set[str] = set()
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename == "tensorrt_bindings/tensorrt.so":
                names |= _so_names(zf.read(info))
            elif info.filename.startswith("tensorrt_bindings/") and info.filename.endswith(".py"):
                names |= _python_names(zf.read(info).decode("utf-8", "replace"))
    return names


def _so_names(data: bytes) -> set[str]:
    """The C strings of a shared object that are identifiers (``name``), and the identifiers that
    end a longer C string (``~name``: where the linker may have stored a literal ``name`` as the
    tail of another, as ``DataType`` inside ``nvinfer1::DataType``). Strings end at NUL; a line
    break inside a docstring ends nothing."""
    out: set[str] = set()
    for chunk in data.split(b"\0"):
        m = _END.search(chunk)
        if m is None:
            continue
        ident = m.group(2).decode()
        if m.group(1):  # printable text before it: a tail of a longer string
            out.add("~" + ident)
        elif not ident.startswith("_Z"):  # a string of its own (mangled C++ symbols left out)
            out.add(ident)
    return out


def _python_names(source: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def fixture_path(version: str) -> Path:
    return FIXTURES / f"{version}.txt"


def write_fixture(version: str, wheel: Path) -> Path:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    names = sorted(extract_names(wheel))
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = fixture_path(version)
    header = f"# {wheel.name} sha256 {digest}: identifiers of tensorrt_bindings (tools/trt_api.py extract)\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + "\n".join(names) + "\n")
    tmp.replace(path)
    return path


def read_fixture(version: str) -> frozenset[str]:
    lines = fixture_path(version).read_text().splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


@dataclasses.dataclass(frozen=True)
class Names:
    """The identifiers of one TensorRT version, with the tail-merge rule of :func:`status`."""

    version: str
    names: frozenset[str]

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def status(self, name: str) -> str:
        """``present`` (a string of its own), ``merged`` (only as the tail of a longer string) or ``absent``."""
        if name in self.names:
            return "present"
        for other in self.names:
            tail = other.lstrip("~")
            if tail.endswith(name) and (tail != name or other.startswith("~")):
                return "merged"
        return "absent"

    def has(self, name: str) -> bool:
        return self.status(name) != "absent"


def load_versions(versions: Sequence[str] = VERSIONS) -> list[Names]:
    return [Names(v, read_fixture(v)) for v in versions]


# --------------------------------------------------------------------------- the names we use
@dataclasses.dataclass(frozen=True)
class Use:
    """One TensorRT name our code takes: ``expr`` as written, at ``where`` (file:line)."""

    name: str
    expr: str
    where: str


class _Flow:
    """Which expressions of the TensorRT modules hold TensorRT values (a small fixpoint analysis).

    Seeds: a call ``import_backend("tensorrt", ...)`` and parameters named ``trt``. A value is
    TensorRT when it is an attribute, call, subscript or ``getattr`` of a TensorRT value, a local
    assigned from one, an attribute (``self._context``, a dataclass field) ever assigned one, a
    parameter some call passes one, or the call of a function that returns one.
    """

    def __init__(self, trees: Mapping[str, ast.Module]) -> None:
        self.trees = trees
        self.funcs: dict[str, list[ast.FunctionDef]] = {}
        self.local: dict[ast.AST, set[str]] = {}
        self.owner: dict[ast.AST, ast.AST] = {}  # node -> enclosing function (or module)
        self.attrs: set[str] = set()
        self.returns: set[str] = set()
        for tree in trees.values():
            self._index(tree, tree)
        changed = True
        while changed:
            changed = self._pass()

    def _index(self, node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            self.owner[child] = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.funcs.setdefault(child.name, []).append(child)
                args = child.args.posonlyargs + child.args.args + child.args.kwonlyargs
                self.local[child] = {a.arg for a in args if a.arg == "trt"}
                self._index(child, child)
            else:
                self._index(child, scope)
        self.local.setdefault(scope, set())

    def is_trt(self, node: ast.AST) -> bool:
        scope = self.owner.get(node)
        if isinstance(node, ast.Name):
            return node.id in self.local.get(scope, set())
        if isinstance(node, ast.Attribute):
            return self.is_trt(node.value) or node.attr in self.attrs
        if isinstance(node, ast.Subscript):
            return self.is_trt(node.value)
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "import_backend":
                return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "tensorrt"
            if isinstance(f, ast.Name) and f.id == "getattr":
                return bool(node.args) and self.is_trt(node.args[0])
            if isinstance(f, ast.Name):
                return f.id in self.returns
            if isinstance(f, ast.Attribute):
                method = isinstance(f.value, ast.Name) and f.value.id == "self" and f.attr in self.returns
                return self.is_trt(f) or method
        return False

    def _mark(self, target: ast.AST) -> bool:
        scope = self.owner.get(target)
        if isinstance(target, ast.Name) and target.id not in self.local[scope]:
            self.local[scope].add(target.id)
            return True
        if isinstance(target, ast.Attribute) and target.attr not in self.attrs:
            self.attrs.add(target.attr)
            return True
        if isinstance(target, (ast.Tuple, ast.List)):
            return any([self._mark(t) for t in target.elts])
        return False

    def _pass(self) -> bool:
        changed = False
        for tree in self.trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and self.is_trt(node.value):
                    changed |= any([self._mark(t) for t in node.targets])
                elif isinstance(node, ast.Return) and node.value is not None and self.is_trt(node.value):
                    fn = self.owner.get(node)
                    if isinstance(fn, ast.FunctionDef) and fn.name not in self.returns:
                        self.returns.add(fn.name)
                        changed = True
                elif isinstance(node, ast.Call):
                    changed |= self._call(node)
        return changed

    def _call(self, node: ast.Call) -> bool:
        changed = False
        for kw in node.keywords:  # dataclass fields / keyword parameters given a TensorRT value
            if kw.arg is not None and self.is_trt(kw.value) and kw.arg not in self.attrs:
                self.attrs.add(kw.arg)
                changed = True
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        for fn in self.funcs.get(name or "", []):
            params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            if params and params[0] == "self" and isinstance(f, ast.Attribute):
                params = params[1:]
            given = list(zip(params, node.args)) + [(kw.arg, kw.value) for kw in node.keywords if kw.arg]
            for param, value in given:
                if self.is_trt(value) and param not in self.local[fn]:
                    self.local[fn].add(param)
                    changed = True
        return changed


def used_names(modules: Iterable[str] = TRT_MODULES, root: Path = ROOT) -> list[Use]:
    """Every TensorRT attribute, method and enum member the TensorRT modules take, found in their AST:
    attributes of TensorRT values, constant ``getattr`` names, and the methods a class derived
    from a TensorRT class overrides (``ILogger.log``: defined there and never called by our code,
    so TensorRT calls it)."""
    trees = {m: ast.parse((root / m).read_text(), filename=m) for m in modules}
    flow = _Flow(trees)
    uses: list[Use] = []
    calls = [n for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.Call)]
    # attributes our code calls itself: a derived class's own helpers, not overrides
    called = {n.func.attr for n in calls if isinstance(n.func, ast.Attribute)}
    for module, tree in trees.items():
        for node in ast.walk(tree):
            where = f"{module}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and flow.is_trt(node.value):
                if not (node.attr.startswith("__") and node.attr != "__version__"):
                    uses.append(Use(node.attr, ast.unparse(node), where))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                if len(node.args) >= 2 and flow.is_trt(node.args[0]) and isinstance(node.args[1], ast.Constant):
                    uses.append(Use(str(node.args[1].value), ast.unparse(node), where))
            elif isinstance(node, ast.ClassDef) and any(flow.is_trt(b) for b in node.bases):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_") and item.name not in called:
                        uses.append(Use(item.name, f"{node.name}({ast.unparse(node.bases[0])}).{item.name}", where))
    return uses


def plan_uses(major: int) -> set[tuple[str, str]]:
    """Every ``(Enum, MEMBER)`` a build plan of TensorRT ``major`` makes :func:`build_engine` resolve."""
    out: set[tuple[str, str]] = set()
    for _, plan in enumerate_plans(major):
        for members in plan_members(plan).values():
            out |= set(members)
    return out


def plan_enum_names() -> set[str]:
    return set(PLAN_ENUMS.values())


# --------------------------------------------------------------------------- the check
@dataclasses.dataclass
class Row:
    name: str
    kind: str  # "code" (used on every version) or "plan 10" / "plan 10, 11" (resolved by plans of those majors)
    cells: dict[str, str]  # version -> present / merged / absent / guarded
    where: str

    @property
    def violation(self) -> bool:
        return "absent" in self.cells.values()


def conformance(versions: Sequence[Names], root: Path = ROOT) -> list[Row]:
    """One row per name: its status in each version. ``absent`` in a row is a violation: our code
    takes a name that version does not declare, without a version check that avoids it there."""
    rows: dict[str, Row] = {}
    for use in used_names(root=root):
        if use.name not in rows:
            rows[use.name] = Row(use.name, "code", {v.version: v.status(use.name) for v in versions}, use.where)
    for enum in sorted(plan_enum_names()):
        rows.setdefault(enum, Row(enum, "code", {v.version: v.status(enum) for v in versions}, "PLAN_ENUMS"))
    majors = sorted({v.major for v in versions})
    planned = {m: plan_uses(m) for m in majors}
    members = sorted(set().union(*planned.values()))
    for enum, member in members:
        by = [m for m in majors if (enum, member) in planned[m]]
        cells = {}
        for v in versions:
            st = v.status(member)
            cells[v.version] = st if v.major in by else ("guarded" if st == "absent" else f"{st}, unused")
        rows[f"{enum}.{member}"] = Row(
            f"{enum}.{member}", "plan " + ", ".join(map(str, by)), cells, "plan_members(enumerate_plans)"
        )
    return list(rows.values())


def markdown_table(rows: Sequence[Row], versions: Sequence[Names]) -> str:
    head = "| name | used by | " + " | ".join(v.version for v in versions) + " |"
    sep = "|" + "---|" * (len(versions) + 2)
    lines = [head, sep]
    for r in sorted(rows, key=lambda r: (r.kind != "code", r.name)):
        lines.append(f"| `{r.name}` | {r.kind} | " + " | ".join(r.cells[v.version] for v in versions) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("fetch", "extract", "table"))
    p.add_argument("--dir", type=Path, default=WHEEL_DIR, help=f"wheel folder (default {WHEEL_DIR})")
    args = p.parse_args(argv)
    if args.action == "fetch":
        for path in fetch(directory=args.dir):
            print(path)
        return 0
    if args.action == "extract":
        for version, wheel in zip(VERSIONS, fetch(directory=args.dir)):
            print(f"{write_fixture(version, wheel)}: {len(read_fixture(version))} names from {wheel.name}")
        return 0
    versions = load_versions()
    rows = conformance(versions)
    print(markdown_table(rows, versions))
    bad = [r for r in rows if r.violation]
    for r in bad:
        absent = ", ".join(v for v, s in r.cells.items() if s == "absent")
        print(f"VIOLATION: {r.name} ({r.where}) is absent in {absent}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
