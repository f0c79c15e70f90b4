"""The suite's own checks: a conformance skip is listed and counted, and fails under CI=true."""
from __future__ import annotations

from pathlib import Path

import conftest
import pytest

pytest_plugins = ["pytester"]

SKIPPING = """
import pytest
from conftest import conformance_path

def test_needs_data():
    pytest.skip(f"conformance set not found at {conformance_path('navsim_dev')}")

def test_other_skip():
    pytest.skip("mmcv not installed")
"""


@pytest.fixture
def suite(pytester, monkeypatch, tmp_path):
    pytester.makeconftest(Path(conftest.__file__).read_text())
    pytester.makepyfile(test_inner=SKIPPING)
    monkeypatch.setenv("EUPE_DRIVE_CONFORMANCE", str(tmp_path / "absent"))
    return pytester


@pytest.mark.parametrize("ci", ["", "true"])
def test_conformance_skip_is_listed_and_fails_only_under_ci(suite, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    result = suite.runpytest_inprocess("-ra")
    if ci:
        result.assert_outcomes(failed=1, skipped=1)
        result.stdout.fnmatch_lines(["*CI=true but the conformance data is missing*"])
    else:
        result.assert_outcomes(skipped=2)
        result.stdout.fnmatch_lines(["1 conformance tests skipped: data not found at *absent*",
                                     "SKIPPED*conformance set not found*"])
