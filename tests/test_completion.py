"""Shell completion: generated from the parser, so every option completes, in bash and zsh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backfill.cli import build_parser
from backfill.completion import commands_of


def _script(shell: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "backfill", "completion", shell],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def _bash_complete(script: Path, words: list[str]) -> list[str]:
    """What bash offers for the last word of ``words`` (the word being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        '_backfill_complete; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return [line for line in result.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "backfill.bash"
    path.write_text(_script("bash"))
    return path


def test_the_bash_script_parses(bash_script: Path) -> None:
    subprocess.run(["bash", "-n", str(bash_script)], check=True)


def test_bash_completes_commands_options_and_their_values(bash_script: Path) -> None:
    assert "retry" in _bash_complete(bash_script, ["backfill", "re"])
    assert _bash_complete(bash_script, ["backfill", "run", "--max-att"]) == ["--max-attempts"]
    assert _bash_complete(bash_script, ["backfill", "retry", "--conf"]) == ["--config"]
    assert _bash_complete(bash_script, ["backfill", "run", "--dry"]) == ["--dry-run"]
    assert sorted(_bash_complete(bash_script, ["backfill", "run", "--order", ""])) == [
        "newest-first",
        "oldest-first",
    ]
    assert _bash_complete(bash_script, ["backfill", "run", "--retry-mode", "n"]) == ["new-run"]
    assert sorted(_bash_complete(bash_script, ["backfill", "completion", ""])) == [
        "--help",
        "-h",
        "bash",
        "zsh",
    ]


def test_every_option_of_every_command_is_in_both_scripts() -> None:
    bash, zsh = _script("bash"), _script("zsh")
    commands = commands_of(build_parser())
    assert {c.name for c in commands} >= {"plan", "run", "retry", "status", "completion"}
    for command in commands:
        for option in command.options:
            for flag in option.flags:
                assert flag in bash, flag
                assert flag in zsh, flag


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_the_zsh_script_parses_and_registers(tmp_path: Path) -> None:
    path = tmp_path / "_backfill"
    path.write_text(_script("zsh"))
    subprocess.run(["zsh", "-n", str(path)], check=True)
    result = subprocess.run(
        [
            "zsh",
            "-fc",
            f"autoload -U compinit; compinit -u -D; source {path}; print $_comps[backfill]",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "_backfill"
