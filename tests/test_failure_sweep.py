"""The bad-input sweep (``tools/failure_sweep.py``) in CI: every case through the CLI must exit with its
code, print one error line naming the bad value and no traceback, and leave the directory unchanged."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "failure_sweep.py"


def _load():
    spec = importlib.util.spec_from_file_location("failure_sweep", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["failure_sweep"] = module
    spec.loader.exec_module(module)
    return module


sweep = _load()


def test_the_sweep_covers_every_subcommand():
    from cass_deploy.cli import COMMANDS

    covered = {c.name.split("/")[0] for c in sweep.CASES}
    assert set(COMMANDS) - {"env"} <= covered, set(COMMANDS) - covered
    assert len(sweep.CASES) >= 150 and len({c.name for c in sweep.CASES}) == len(sweep.CASES)


def test_every_bad_input_is_one_clear_line_and_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch, request):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    if importlib.util.find_spec("ray") is not None:  # the --jobs 2 cases reuse the session's Ray (no start each)
        request.getfixturevalue("ray_session")
    fixtures = sweep.build_fixtures(tmp_path, checkpoint=tiny_checkpoint)
    failures = []
    for case in sweep.CASES:
        problems, err = sweep.run_case(case, fixtures)
        if problems:
            failures.append(f"{case.name}: {'; '.join(problems)} | {err.strip()[-300:]}")
    if Path(fixtures["ro"]).name == "read-only":
        Path(fixtures["ro"]).chmod(0o755)
    assert not failures, "\n".join(failures)
