"""How the ``dsas`` command ends when it is interrupted or its reader goes away."""

import argparse
import subprocess
import sys

from dsas_core import cli


def _parser_running(func) -> argparse.ArgumentParser:
    """A ``dsas`` parser with one subcommand, ``fit``, that runs ``func``."""
    parser = argparse.ArgumentParser(prog="dsas")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("fit").set_defaults(func=func)
    return parser


def test_ctrl_c_ends_with_one_line_and_the_shells_code(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_running(interrupted))
    assert cli.main(["fit"]) == 130
    assert capsys.readouterr().err == "\ndsas fit: interrupted\n"


def test_a_reader_that_goes_away_ends_the_command_quietly():
    # the pipe's reading end is closed before the command prints anything (it imports first)
    code = "import sys; from dsas_core.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "inspect", "assets/concepts/circles-on-black"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141
    assert err == ""
