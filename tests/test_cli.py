import pytest

from tripletkit.cli import main


def test_demo_runs_and_learns(capsys):
    assert main(["demo", "--steps", "60"]) == 0
    out = capsys.readouterr().out
    assert "rank-1 on 20 held-out identities" in out


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out
