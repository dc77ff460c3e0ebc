"""`python -m verify` where a package its checks run on is missing (a plain `pip install attention-cnn`):
one line naming it and the install command, not a conftest traceback above a table of 0/15 verified."""

from __future__ import annotations

import sys

import pytest

from verify import __main__ as verify_cli


@pytest.fixture
def runs(monkeypatch):
    """The report's runs (each call's arguments), the suite itself not run."""
    calls = []
    monkeypatch.setattr("verify.report.run", lambda *args: calls.append(args) or 0)
    return calls


@pytest.mark.parametrize("package", verify_cli.CHECK_PACKAGES)
def test_a_missing_check_package_is_named_with_the_install_command(package, runs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails, as if not installed
    with pytest.raises(SystemExit) as stopped:
        verify_cli.main([])
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert f"needs {package}" in message and "pip install 'attention-cnn[verify]'" in message
    assert runs == []


def test_with_every_check_package_the_report_runs(runs):
    assert verify_cli.main(["--profile", "thorough"]) == 0
    assert runs == [("thorough", None, ())]
