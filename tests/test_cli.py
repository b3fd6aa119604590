"""cli.py: the subcommand registry and the error contract (one line, exit 2, no traceback)."""

import subprocess
import sys

import pytest

from budgetlm import cli


def test_every_registered_command_has_a_module_with_the_contract():
    import importlib

    for name, (module_name, description, _) in cli.COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments), name
        assert callable(module.run), name
        assert description


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_help_of_every_command(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    assert "usage: budgetlm" in capsys.readouterr().out


def test_unknown_flag_is_one_line_exit_2(capsys):
    assert _exit_code(["hardware", "--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_unknown_command_exit_2(capsys):
    assert _exit_code(["frobnicate"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "budgetlm", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("budgetlm ")


def _exit_code(argv):
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv", [["hardware"], ["plan", "--model", "2", "--budget", "1h"], ["prepare", "in.txt", "--out", "out"], ["demo"],
                                  ["generate", "--model", "run", "--prompt", "hi"]], ids=lambda a: a[0])
def test_under_torchrun_only_train_runs(argv, monkeypatch, tmp_path, capsys):
    """Started by torchrun, a one-process command would do its whole job once per rank (and write the
    same files twice): it refuses with one line before doing anything."""
    assert argv[0] not in cli.DISTRIBUTED
    (tmp_path / "in.txt").write_text("some text\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "launch it without torchrun" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
