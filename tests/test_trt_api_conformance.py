"""The TensorRT names our builder and runner use, checked against the real bindings of 10.3, 10.x, 11.x.

The names of each version were extracted from the ``tensorrt-cu12-bindings`` wheel's
``tensorrt.so`` by ``tools/trt_api.py extract`` into ``tests/fixtures/trt_names/`` (no network
needed here); the test that re-extracts them runs where the wheels have been fetched.
"""

from __future__ import annotations

import ast
import enum
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import trt_api  # noqa: E402

import fake_tensorrt  # noqa: E402


@pytest.fixture(scope="module")
def versions():
    return trt_api.load_versions()


@pytest.fixture(scope="module")
def rows(versions):
    return {r.name: r for r in trt_api.conformance(versions)}


def test_every_name_the_code_uses_exists_where_it_is_used(rows, versions):
    bad = [f"{r.name} ({r.where}): {r.cells}" for r in rows.values() if r.violation]
    assert not bad, "TensorRT names used where the bindings lack them:\n" + "\n".join(bad)
    # the analysis found the API (not an empty set): builder, runtime and runner names, and the plans
    for name in ("execute_async_v3", "set_tensor_address", "build_serialized_network", "deserialize_cuda_engine"):
        assert rows[name].kind == "code" and set(rows[name].cells.values()) == {"present"}, rows[name]
    assert rows["log"].where.startswith("cass_deploy/runtime/trt_engine.py")  # the ILogger override
    # the version check is exercised: FP16 is planned for 10 only, and 11.4 does not declare it
    fp16 = rows["BuilderFlag.FP16"]
    assert fp16.kind == "plan 10" and fp16.cells["11.4.0.106"] == "guarded"
    assert fp16.cells["10.3.0"] == fp16.cells["10.16.1.11"] == "present"
    assert rows["BuilderFlag.VERSION_COMPATIBLE"].kind == "plan 10, 11"
    assert {v.major for v in versions} == {10, 11}


def test_the_analysis_follows_values_and_flags_a_missing_name(tmp_path, versions):
    """A TensorRT value reached through a local, a self attribute, a dataclass field, a parameter and a
    return is followed; a name no version declares is reported absent."""
    (tmp_path / "m.py").write_text(
        "from dataclasses import dataclass\n"
        "@dataclass\n"
        "class Held:\n"
        "    engine: object\n"
        "def _trt():\n"
        "    return import_backend('tensorrt', 'x')\n"
        "def load(path):\n"
        "    trt = _trt()\n"
        "    runtime = trt.Runtime(None)\n"
        "    return Held(engine=runtime.deserialize_cuda_engine(b''))\n"
        "def use(ctx):\n"
        "    ctx.execute_async_v2(0)\n"
        "class R:\n"
        "    def go(self):\n"
        "        self._ctx = load('p').engine.create_execution_context()\n"
        "        use(self._ctx)\n"
        "        return self._ctx.not_a_tensorrt_name_at_all\n"
    )
    uses = {u.name: u for u in trt_api.used_names(["m.py"], root=tmp_path)}
    assert {"Runtime", "deserialize_cuda_engine", "create_execution_context", "execute_async_v2"} <= set(uses)
    assert uses["execute_async_v2"].where == "m.py:12"
    v103, v11 = versions[0], versions[-1]
    assert v103.status("not_a_tensorrt_name_at_all") == "absent"
    # execute_async_v2 (implicit batch) is gone from 10.x; execute_v2 stays
    assert v103.status("execute_async_v2") == "absent" and v11.status("execute_v2") == "present"


def test_tail_merged_literals_are_told_apart(versions):
    v = versions[0]
    assert v.status("ILogger") == "present"
    assert v.status("Logger") == "merged"  # stored once as the tail of "ILogger"
    assert v.status("EXPLICIT_BATCH") == "present" and versions[-1].status("EXPLICIT_BATCH") == "absent"


def _fake_names(trt) -> set[str]:
    """Every name the stand-in declares: module attributes, enum members, methods and attributes of
    the classes it defines (found in the source of ``make_fake_tensorrt``)."""
    names = {n for n in vars(trt) if not n.startswith("_") and n not in ("calls", "fail_build")} | {"__version__"}
    for value in vars(trt).values():
        if isinstance(value, type) and issubclass(value, enum.Enum):
            names |= set(value.__members__)
        elif isinstance(value, type):
            names |= {n for n in vars(value) if not n.startswith("_")}
    tree = ast.parse(Path(fake_tensorrt.__file__).read_text())
    maker = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "make_fake_tensorrt")
    for cls in (n for n in ast.walk(maker) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                names.add(node.name)
            elif isinstance(node, ast.Assign) and node.col_offset == cls.col_offset + 4:  # class-level
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
                names |= {e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts}
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                if isinstance(node.ctx, ast.Store) and not node.attr.startswith("_"):
                    names.add(node.attr)
    return names


#: the stand-in's own bookkeeping (what it records, its numpy "engine"), not TensorRT API
FAKE_ONLY = {"calls", "fail_build", "plan", "shapes", "addresses", "flags", "profiles", "cache", "data", "logger"}
FAKE_ONLY |= {"network", "errors", "inputs", "engine", "messages", "t", "index", "onnx", "io", "session", "out_shapes"}


@pytest.mark.parametrize("version", trt_api.VERSIONS)
def test_the_stand_in_declares_only_real_names_and_every_used_one(version, rows):
    real = trt_api.Names(version, trt_api.read_fixture(version))
    trt = fake_tensorrt.make_fake_tensorrt(version)
    declared = _fake_names(trt)
    invented = sorted(n for n in declared - FAKE_ONLY if not real.has(n))
    assert not invented, f"the stand-in declares names TensorRT {version} lacks: {invented}"
    used = {r.name for r in rows.values() if r.kind == "code"} - trt_api.plan_enum_names()
    missing = sorted(used - declared)
    assert not missing, f"the code uses names the stand-in for {version} lacks: {missing}"
    # every member a plan of this major resolves is an enum member of the stand-in, and no more:
    # the precision flags of TensorRT 10 do not exist in the stand-in for 11
    for enum_name, member in trt_api.plan_uses(real.major):
        assert hasattr(getattr(trt, enum_name), member), (version, enum_name, member)
    assert hasattr(trt.BuilderFlag, "FP16") == (real.major < 11) == (real.status("FP16") == "present")


@pytest.mark.parametrize("version", trt_api.VERSIONS)
def test_fixtures_are_what_the_wheels_declare(version):
    wheel = trt_api.wheel_path(version)
    if wheel is None:
        pytest.skip(
            f"the {trt_api.DISTRIBUTION} {version} wheel is not in {trt_api.WHEEL_DIR} "
            "(fetch it with `python tools/trt_api.py fetch`, or set CASS_TRT_WHEELS to a folder holding it)"
        )
    assert trt_api.extract_names(wheel) == trt_api.read_fixture(version)
