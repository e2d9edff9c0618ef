"""eval_command as an argument list, filled in without a shell.

The template is split into arguments once, as a POSIX shell would split it, and {checkpoint},
{step} and {output} are replaced inside those arguments. The command then runs without a
shell, so no value (an output_dir holding `;cmd;#`, `$(cmd)`, quotes or spaces) can change
the command's structure: each value stays inside the argument it was written in. The same
values are in the environment as EMBER_CHECKPOINT, EMBER_STEP and EMBER_OUTPUT.

Two templates are refused, since they would turn a value back into code: shell operators
outside quotes (`;`, `|`, `&&`, `>`; there is no shell to run them) and a placeholder inside
the code argument of an interpreter (`sh -c "… {checkpoint}"`, `python -c "… {output}"`).
For a pipeline, pass the values as arguments: `sh -c 'python eval.py "$1" | tail -1' _ {checkpoint}`.
"""
from __future__ import annotations

import os
import re
import shlex

from .errors import ConfigError

PLACEHOLDERS = ("checkpoint", "step", "output")
_OPERATORS = {";", ";;", "|", "||", "&", "&&", ">", ">>", "<", "<<", "(", ")", "|&", ">&", "<&"}
# programs whose -c / -e argument is source code
_INTERPRETER = re.compile(r"^(sh|bash|dash|zsh|ksh|fish|csh|tcsh|python[\d.]*|pypy[\d.]*|perl|ruby|node|php)$")


def parse_eval_command(template: str) -> list[str]:
    """The template's arguments, or ConfigError saying why it cannot run safely."""
    try:
        argv = shlex.split(template)
        words = list(shlex.shlex(template, posix=True, punctuation_chars=True))
    except ValueError as err:
        raise ConfigError(f"eval_command cannot be split into arguments ({err}); check its quotes") from None
    if not argv:
        raise ConfigError("eval_command is empty")
    operators = [w for w in words if w in _OPERATORS]
    if operators:
        raise ConfigError(f"eval_command uses the shell operator '{operators[0]}', but it runs without a shell (so no "
                          "path can inject commands); for a pipeline write sh -c '... \"$1\" ...' _ {checkpoint}")
    if _INTERPRETER.match(os.path.basename(argv[0])):
        for flag, code in zip(argv, argv[1:]):
            if flag in ("-c", "-e") and any("{" + name + "}" in code for name in PLACEHOLDERS):
                raise ConfigError(f"eval_command puts a placeholder inside {argv[0]}'s {flag} code, where a path would "
                                  "become code; pass it as an argument instead, e.g. "
                                  f"{argv[0]} {flag} '... \"$1\" ...' _ {{checkpoint}} (or read $EMBER_CHECKPOINT)")
    return argv


def fill(argv: list[str], values: dict[str, str]) -> list[str]:
    """Each argument with its placeholders replaced; other braces (awk, jq) stay as written."""
    filled = []
    for arg in argv:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", value)
        filled.append(arg)
    return filled
