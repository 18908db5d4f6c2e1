"""Manifest build/write/read/verify, its typed properties, ONNX metadata round trip."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cass_deploy.errors import InputError
from cass_deploy.runtime import manifest as mf
from cass_deploy.runtime.base import TensorSpec


def _tiny_onnx(path: Path) -> Path:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="producer_note", value="keep me")
    onnx.save(model, str(path))
    return path


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    _tiny_onnx(d / "model.onnx")
    (d / "model.engine").write_bytes(b"\x00engine-bytes\x01" * 10)
    (tmp_path / "ckpt.pt").write_bytes(b"checkpoint")
    return d


def _manifest(d: Path, **kw):
    args = dict(
        artefacts={"onnx": d / "model.onnx", "engine": d / "model.engine"},
        source_checkpoint=d.parent / "ckpt.pt",
        inputs=[TensorSpec("images", ("batch", 3, 720, 1280), np.float32)],
        outputs=[
            ("scores", ["batch", 3600], "float32"),
            {"name": "keep_idx", "shape": ["batch", 1800], "dtype": "int64"},
        ],
        grid=(45, 80),
        k=1800,
        keep_ratio=0.5,
        pruner_mode="global",
        precision="fp16",
        image_size=(720, 1280),
        dynamic_batch=(1, 2, 4),
        opset=17,
        parts="predictor",
        trtexec="trtexec --onnx=model.onnx",
        versions={"torch": "2.13.0"},
    )
    args.update(kw)
    return mf.build_manifest(**args)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_manifest_records_everything(export_dir):
    man = _manifest(export_dir)
    assert isinstance(man, mf.Manifest)
    m = man.to_dict()
    assert m["schema_version"] == mf.SCHEMA_VERSION == 1
    assert m["artefacts"]["onnx"] == {
        "file": "model.onnx",
        "sha256": _sha(export_dir / "model.onnx"),
        "bytes": (export_dir / "model.onnx").stat().st_size,
    }
    assert m["artefacts"]["engine"]["sha256"] == _sha(export_dir / "model.engine")
    assert m["source_checkpoint"]["sha256"] == hashlib.sha256(b"checkpoint").hexdigest()
    assert m["inputs"] == [{"name": "images", "shape": ["batch", 3, 720, 1280], "dtype": "float32"}]
    assert [o["dtype"] for o in m["outputs"]] == ["float32", "int64"]
    assert m["batch"] == {"dynamic": True, "min": 1, "opt": 2, "max": 4}
    assert (m["grid"], m["k"], m["precision"], m["opset"]) == ([45, 80], 1800, "fp16", 17)
    assert m["versions"] == {"torch": "2.13.0"}
    json.dumps(m)  # serialisable as is


def test_collect_versions_reads_metadata_without_importing():
    versions = mf.collect_versions()
    assert versions["cass_deploy"] and versions["python"]
    import onnx as _onnx

    assert versions["onnx"] == _onnx.__version__
    assert "onnxruntime" in versions


@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"precision": "fp8"}, "precision must be one of"),
        ({"parts": "backbone"}, "parts must be one of"),
        ({"pruner_mode": "random"}, "pruner_mode must be one of"),
        ({"k": 0}, "k must be a positive integer"),
        ({"keep_ratio": 1.5}, "keep_ratio must be in"),
        ({"dynamic_batch": (4, 2, 8)}, "1 <= min <= opt <= max"),
        ({"batch": 2}, "either a fixed batch or a dynamic batch"),
        ({"grid": (45,)}, "grid must be two positive integers"),
        ({"artefacts": {}}, "at least one artefact"),
    ],
)
def test_build_manifest_rejects_bad_values(export_dir, kw, pattern):
    with pytest.raises(InputError, match=pattern):
        _manifest(export_dir, **kw)


def test_write_read_round_trip_and_no_overwrite(export_dir):
    m = _manifest(export_dir)
    path = m.write(export_dir)
    assert path == export_dir / "manifest.json"
    assert json.loads(path.read_text()) == m.to_dict()  # to_dict is the JSON on disk
    assert mf.Manifest.read(export_dir) == m
    assert mf.Manifest.read(path).to_dict() == m.to_dict()
    with pytest.raises(InputError, match="already exists; pass --force"):
        _manifest(export_dir, k=900).write(export_dir)
    assert mf.Manifest.read(export_dir).k == 1800
    _manifest(export_dir, k=900).write(export_dir, force=True)
    assert mf.Manifest.read(export_dir).k == 900
    mf.Manifest(_manifest(export_dir, k=450).to_dict()).write(export_dir, force=True)  # from the dict form
    assert mf.Manifest.read(export_dir).k == 450
    assert not list(export_dir.glob(".manifest.json.*"))  # no temp files left behind


def test_to_dict_is_a_copy(export_dir):
    m = _manifest(export_dir)
    d = m.to_dict()
    d["k"] = 1
    d["extra"]["x"] = 1
    m.extra["y"] = 2
    assert m.k == 1800 and m.extra == {} and m.to_dict()["extra"] == {}


def test_verify_detects_tampering_and_missing_files(export_dir):
    m = _manifest(export_dir)
    check = m.verify(export_dir)
    assert check and check.ok and sorted(check.checked) == ["model.engine", "model.onnx"]
    engine = export_dir / "model.engine"
    data = bytearray(engine.read_bytes())
    data[3] ^= 0xFF
    engine.write_bytes(bytes(data))
    check = m.verify(export_dir)
    assert not check
    assert check.mismatches[0]["role"] == "engine"
    assert check.mismatches[0]["actual"] == _sha(engine)
    assert "model.engine (engine)" in check.summary()
    (export_dir / "model.onnx").unlink()
    check = m.verify(export_dir)
    assert check.missing == ["model.onnx"] and check.to_dict()["ok"] is False


def test_read_manifest_errors(tmp_path, export_dir):
    with pytest.raises(InputError, match="no manifest.json in"):
        mf.Manifest.read(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        mf.Manifest.read(tmp_path / "gone.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1,\n "k": }')
    with pytest.raises(InputError, match="not valid JSON \\(line 2"):
        mf.Manifest.read(bad)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(InputError, match="must hold a JSON object"):
        mf.Manifest.read(listing)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({**_manifest(export_dir).to_dict(), "schema_version": 7}))
    with pytest.raises(InputError, match="schema_version 7; .*reads schema_version 1"):
        mf.Manifest.read(future)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"schema_version": 1, "precision": "fp32"}))
    with pytest.raises(InputError, match="lacks required key\\(s\\) artefacts, inputs, outputs"):
        mf.Manifest.read(partial)
    with pytest.raises(InputError, match="schema_version"):
        mf.Manifest({"schema_version": 0}).write(tmp_path)


def test_onnx_metadata_round_trip(export_dir):
    onnx_path = export_dir / "model.onnx"
    m = _manifest(export_dir)
    meta = m.onnx_metadata()
    assert "artefacts" not in meta and meta["k"] == 1800
    meta["numeric_string"] = "123"
    mf.embed_onnx_metadata(onnx_path, meta)
    back = mf.read_onnx_metadata(onnx_path)
    assert back.pop("producer_note") == "keep me"  # existing props survive
    assert back == json.loads(json.dumps(meta))  # tuples become lists, nothing else changes
    assert back["numeric_string"] == "123" and back["grid"] == [45, 80]
    raw = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert raw["precision"] == "fp16" and raw["k"] == "1800"
    onnx.checker.check_model(onnx.load(str(onnx_path)))
    # embedding again replaces keys instead of duplicating them
    mf.embed_onnx_metadata(onnx_path, {"k": 900})
    keys = [p.key for p in onnx.load(str(onnx_path)).metadata_props]
    assert keys.count("k") == 1 and mf.read_onnx_metadata(onnx_path)["k"] == 900


def test_embed_into_model_proto_in_place():
    model = helper.make_model(helper.make_graph([], "empty", [], []))
    out = mf.embed_onnx_metadata(model, {"pruner_mode": "band", "topk_sizes": [10, 20]})
    assert out is model
    assert mf.read_onnx_metadata(model) == {"pruner_mode": "band", "topk_sizes": [10, 20]}
    with pytest.raises(InputError, match="missing.onnx does not exist"):
        mf.read_onnx_metadata(Path("missing.onnx"))


# -- the typed reader ---------------------------------------------------------------------------
def test_properties_of_a_dynamic_batch_manifest(export_dir):
    m = _manifest(
        export_dir,
        extra={"patch_size": 16, "num_classes": 6, "tensorrt": {"device": "Orin (nvgpu)"}},
        versions={"tensorrt": "10.3.0"},
    )
    assert (m.precision, m.parts, m.pruner_mode, m.keep_ratio, m.k) == ("fp16", "predictor", "global", 0.5, 1800)
    assert m.topk_sizes is None and m.opset == 17
    assert m.image_size == (720, 1280) and m.grid == (45, 80)
    assert m.patch_size == 16 and m.num_classes == 6
    assert m.dynamic_batch == (1, 2, 4) and m.fixed_batch is None and m.batch_step == 2
    assert m.artefact_roles == ("onnx", "engine")
    assert m.artefact_file("engine") == "model.engine"
    assert m.artefact_path("onnx", export_dir) == export_dir / "model.onnx"
    assert m.artefact_file("calibration") is None
    with pytest.raises(InputError, match="lists no calibration artefact \\(it has: onnx, engine\\)"):
        m.artefact_path("calibration", export_dir)
    assert m.source_checkpoint_path == str(export_dir.parent / "ckpt.pt")
    assert m.source_checkpoint_sha256 == hashlib.sha256(b"checkpoint").hexdigest()
    assert m.trt_version == "10.3.0" and m.built_on_device == "Orin (nvgpu)"
    assert m.versions == {"tensorrt": "10.3.0"} and m.trtexec == "trtexec --onnx=model.onnx"
    assert [t["name"] for t in m.inputs] == ["images"] and [t["name"] for t in m.outputs] == ["scores", "keep_idx"]


def test_properties_of_a_fixed_batch_manifest(export_dir):
    m = _manifest(
        export_dir,
        dynamic_batch=None,
        batch=3,
        pruner_mode="band",
        topk_sizes=(10, 20),
        k=None,
        source_checkpoint=None,
        versions={},
        parts="full",
    )
    assert m.fixed_batch == 3 and m.dynamic_batch is None and m.batch_step == 3
    assert m.topk_sizes == (10, 20) and m.k is None and m.parts == "full"
    assert m.source_checkpoint_path is None and m.source_checkpoint_sha256 is None
    assert m.trt_version is None and m.built_on_device is None
    assert m.patch_size is None and m.num_classes is None and m.extra == {}
    one = _manifest(export_dir, dynamic_batch=None)  # no batch given: a fixed batch of one
    assert (one.fixed_batch, one.dynamic_batch, one.batch_step) == (1, None, 1)


def test_a_malformed_dynamic_batch_is_named():
    m = mf.Manifest({"batch": {"dynamic": True, "min": 1}})
    with pytest.raises(InputError, match="integer min, opt and max"):
        _ = m.batch_step


def test_from_onnx_reads_the_embedded_manifest(export_dir):
    m = _manifest(export_dir, extra={"num_classes": 6})
    onnx_path = export_dir / "model.onnx"
    mf.embed_onnx_metadata(onnx_path, m.onnx_metadata())
    back = mf.Manifest.from_onnx(onnx_path)
    assert back.artefact_roles == ()  # hashes are not embedded (they would be circular)
    for name in (
        "precision",
        "parts",
        "pruner_mode",
        "keep_ratio",
        "k",
        "image_size",
        "grid",
        "num_classes",
        "dynamic_batch",
        "fixed_batch",
        "batch_step",
        "source_checkpoint_sha256",
        "trtexec",
    ):
        assert getattr(back, name) == getattr(m, name), name
    assert mf.Manifest.from_onnx(onnx.load(str(onnx_path))) == back  # a ModelProto works too
    assert back.to_dict().pop("producer_note") == "keep me"  # foreign keys are kept


def test_from_onnx_of_a_foreign_model_has_no_facts(tmp_path):
    bare = mf.Manifest.from_onnx(_tiny_onnx(tmp_path / "plain.onnx"))
    assert bare.image_size is None and bare.precision is None and bare.grid is None
    assert (bare.fixed_batch, bare.dynamic_batch, bare.batch_step) == (None, None, 1)
    assert bare.extra == {} and bare.built_on_device is None


def test_candidates_carry_a_manifest(export_dir):
    from cass_deploy.runtime.artefacts import resolve_candidates

    # the tiny graph's one output: readers refuse an ONNX whose outputs differ from its manifest's
    kw = dict(dynamic_batch=None, batch=2, outputs=[("y", ["batch", 4], "float32")])
    m = _manifest(export_dir, **kw)
    mf.embed_onnx_metadata(export_dir / "model.onnx", m.onnx_metadata())
    m = _manifest(export_dir, **kw)  # rehash after embedding
    m.write(export_dir)
    notes: list[str] = []
    by_dir = resolve_candidates([str(export_dir)], notes=notes)
    bare = resolve_candidates([str(export_dir / "model.onnx")])[0]
    engine = resolve_candidates([str(export_dir / "model.engine")])[0]
    assert by_dir[0].kind == "onnx" and by_dir[0].path == export_dir / "model.onnx"
    assert by_dir[0].meta == m and engine.meta == m and engine.kind == "engine"
    # a .onnx with its export's manifest beside it is read with that manifest (and checked against its hash)
    assert bare.meta == m
    # without the manifest it carries the keys embedded in its metadata (no artefact list)
    lone = export_dir.parent / "lone.onnx"
    shutil.copy(export_dir / "model.onnx", lone)
    alone = resolve_candidates([str(lone)])[0]
    assert isinstance(alone.meta, mf.Manifest) and alone.meta.artefact_roles == ()
    assert {c.meta.batch_step for c in (*by_dir, bare, engine, alone)} == {2}
