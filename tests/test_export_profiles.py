"""Export target profiles (cass_deploy.export.profiles and the shipped YAML files)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml

from cass_deploy.errors import ConfigError, InputError, LimitError
from cass_deploy.export.profiles import PROFILE_DIR, ExportProfile, list_profiles, load_profile

SHIPPED = ["cpu", "jetson-agx-orin", "jetson-orin-nano", "jetson-orin-nx", "x86-gpu"]


def test_shipped_profiles_are_listed():
    assert list_profiles() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_profile_loads_and_fits_topk(name):
    p = load_profile(name)
    assert p.name == name and p.description
    raw = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())
    h, w = raw["image_size"]
    assert h % 16 == 0 and w % 16 == 0
    patches = (h // 16) * (w // 16)
    k = math.ceil(raw["keep_ratio"] * patches)
    assert (p.num_patches(), p.topk_k()) == (patches, k)
    if raw["pruner_mode"] == "global":
        assert k <= 3840
    if p.device.startswith("jetson"):
        assert p.target == "tensorrt" and p.batch == 1 and p.memory_bandwidth_gbs > 0
    d = p.to_dict()
    assert d["k"] == k and d["grid"] == [h // 16, w // 16] and d["image_size"] == [h, w]


def test_profile_specifics():
    nano, nx, agx = (load_profile(n) for n in ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"))
    assert nano.image_size == (544, 960) and nano.num_patches() == 34 * 60
    assert nano.workspace_mib < nx.workspace_mib < agx.workspace_mib
    assert nano.dla_core is None and (nano.memory_bandwidth_gbs, nx.memory_bandwidth_gbs, agx.memory_bandwidth_gbs) == (
        68,
        102,
        205,
    )
    x86 = load_profile("x86-gpu")
    assert x86.dynamic_batch == (1, 4, 8) and x86.max_batch() == 8
    cpu = load_profile("cpu")
    assert (cpu.target, cpu.precision, cpu.image_size) == ("onnxruntime", "fp32", (256, 448))


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(InputError) as err:
        load_profile("jetson-tx3")
    for name in SHIPPED:
        assert name in str(err.value)


def _base(**kw):
    data = dict(
        name="t",
        description="test",
        target="tensorrt",
        device="jetson-agx-orin",
        image_size=[720, 1280],
        precision="fp16",
        workspace_mib=1024,
    )
    data.update(kw)
    return data


def test_load_profile_from_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_base(name="mine", dla_core=0, keep_ratio=0.25)))
    p = load_profile(path)
    assert (p.name, p.dla_core, p.topk_k()) == ("mine", 0, math.ceil(0.25 * 3600))
    with pytest.raises(InputError):
        load_profile(tmp_path / "missing.yaml")


def _write(tmp_path, **kw):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(_base(**kw)))
    return path


@pytest.mark.parametrize(
    "kw",
    [
        dict(image_size=[1080, 1920]),
        dict(precision="fp8"),
        dict(target="tflite"),
        dict(device="jetson-tx2"),
        dict(batch=0),
        dict(keep_ratio=0.0),
        dict(keep_ratio=1.5),
        dict(dynamic_batch=[4, 2, 8]),
        dict(dynamic_batch=[1, 4, 8], batch=16),
        dict(opset=11),
        dict(device="jetson-orin-nano", dla_core=0),
        dict(dla_core=2),
        dict(target="onnxruntime", dla_core=0),
        dict(pruner_mode="random"),
        dict(dla_core=0, precision="fp32"),
        dict(dla_core=0, dynamic_batch=[1, 1, 2]),
        dict(unknown_key=1),
        dict(workspace_mib=-5),
    ],
)
def test_bad_profiles_are_config_errors(tmp_path, kw):
    with pytest.raises(ConfigError):
        load_profile(_write(tmp_path, **kw))


def test_missing_required_key(tmp_path):
    data = _base()
    del data["device"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="device"):
        load_profile(path)


def test_topk_limit_applies_to_tensorrt_global_only(tmp_path):
    # 1088x1920 -> 68x120 = 8160 patches; keep 0.5 -> k = 4080 > 3840
    with pytest.raises(LimitError, match="4080") as err:
        load_profile(_write(tmp_path, image_size=[1088, 1920], keep_ratio=0.5))
    # the refusal is backends.limits.check_request's, naming the profile
    assert str(err.value).startswith("export profile 't': TopK on tensorrt10 supports k <= 3840, but k=4080")
    assert load_profile(_write(tmp_path, image_size=[1088, 1920], pruner_mode="band")).topk_k() == 4080
    ort = load_profile(_write(tmp_path, image_size=[1088, 1920], target="onnxruntime", device="cpu"))
    assert ort.topk_k() == 4080


def test_k_is_the_pruners(tmp_path):
    # 160x160 -> 10x10 = 100 patches; 0.3 * 100 is 30.000000000000004 in floating point: the pruner keeps 30
    assert load_profile(_write(tmp_path, image_size=[160, 160], keep_ratio=0.3)).topk_k() == 30


def test_profile_is_a_frozen_dataclass():
    p = load_profile("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.batch = 2  # type: ignore[misc]
    assert isinstance(p, ExportProfile)
