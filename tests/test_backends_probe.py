"""backends.probe: availability without importing, lazy imports with install hints, the version table."""

from __future__ import annotations

import sys

import pytest

from cass_deploy.backends import probe
from cass_deploy.errors import BackendUnavailable, ConfigError

from conftest import run_python


def test_lazy_import_defers_the_import_until_first_use():
    code = (
        "import sys\n"
        "from cass_deploy.backends.probe import lazy_import\n"
        "json_mod = lazy_import('json.decoder')\n"
        "assert 'json.decoder' not in sys.modules\n"
        "assert json_mod.JSONDecodeError.__name__ == 'JSONDecodeError'\n"
        "assert 'json.decoder' in sys.modules\n"
    )
    run_python(code)


def test_lazy_import_of_a_missing_backend_names_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(probe, "_has_module", lambda module: module != "tensorrt")
    trt = probe.lazy_import("tensorrt", "tensorrt", "building an engine")
    with pytest.raises(BackendUnavailable, match=r"building an engine needs tensorrt: .*cass-deploy\[trt\]"):
        trt.Builder  # noqa: B018 - the attribute access is the import


def test_lazy_import_follows_sys_modules(monkeypatch):
    fake = type(sys)("fake_backend_module")
    fake.answer = 42
    monkeypatch.setitem(sys.modules, "fake_backend_module", fake)
    lazy = probe.lazy_import("fake_backend_module")
    assert lazy.answer == 42
    replaced = type(sys)("fake_backend_module")
    replaced.answer = 43
    monkeypatch.setitem(sys.modules, "fake_backend_module", replaced)
    assert lazy.answer == 43  # a stand-in put into sys.modules later is what callers see


def test_lazy_import_rejects_an_unknown_backend_name():
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'"):
        probe.lazy_import("tensorflow", "tensorflow")


def test_one_version_table_feeds_env_and_the_manifest():
    from cass_deploy.backends import envinfo
    from cass_deploy.runtime import manifest

    assert set(envinfo.PACKAGES) == set(probe.VERSIONS)
    assert set(manifest.MANIFEST_VERSIONS) <= set(probe.VERSIONS)
    assert probe.installed_version("numpy") == __import__("numpy").__version__
    assert probe.installed_version("definitely-not-a-package-xyz") is None
