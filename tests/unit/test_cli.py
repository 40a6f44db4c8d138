"""lseg.cli: the argv rule (overrides anywhere), number validators and the one-line error policy."""
import argparse
import errno

import pytest

from lseg import cli
from lseg.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tool")
    p.add_argument("--scales", type=cli.positive_float, nargs="+")
    p.add_argument("--workers", type=cli.non_negative_int, default=0)
    p.add_argument("--steps", type=cli.positive_int)
    p.add_argument("overrides", nargs="*")
    return p


def test_overrides_anywhere_never_feed_a_flag():
    args = cli.parse_args(_parser(), ["data.root=X", "--scales", "0.5", "1", "optim.lr=0.1", "--steps", "3"])
    assert args.scales == [0.5, 1.0] and args.steps == 3
    assert args.overrides == ["data.root=X", "optim.lr=0.1"]


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "argument --steps: must be > 0, got 0"),
    (["--workers", "-1"], "argument --workers: must be >= 0, got -1"),
    (["--scales", "-1"], "argument --scales: must be > 0, got -1"),
    (["--steps", "two"], "argument --steps: expected an integer, got 'two'"),
])
def test_bad_numbers_are_argparse_errors_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(_parser(), argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_main_prints_user_errors_in_one_line_and_keeps_bugs_loud(capsys):
    @cli.cli_main()
    def user_error(argv=None) -> int:
        raise ConfigError("optim.lr: must be > 0, got -1.0")

    @cli.cli_main()
    def disk_full(argv=None) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/step.pt")

    @cli.cli_main()
    def bug(argv=None) -> int:
        raise KeyError("oops")

    assert user_error() == cli.USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err == "error: optim.lr: must be > 0, got -1.0\n"
    assert disk_full() == 2 and capsys.readouterr().err == "error: /runs/x/step.pt: No space left on device\n"
    with pytest.raises(KeyError):
        bug()


def test_peer_failures_are_told_apart_from_own_errors():
    assert cli.is_peer_failure(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert not cli.is_peer_failure(RuntimeError("CUDA out of memory"))
    assert cli.first_line(RuntimeError("[x/pair.cc:545] Connection reset by peer. More text\nline 2")) \
        == "Connection reset by peer"
