"""The README's flag tables, made from the options tables.

``python -m hqm.config.docs README.md`` rewrites every block between
``<!-- options:COMMAND -->`` and ``<!-- /options:COMMAND -->``; a test checks that
the README holds exactly what this module makes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hqm.config.commands import COMMANDS
from hqm.config.tables import Command

_BLOCK = re.compile(r"(<!-- options:(\w+) -->\n)(.*?)(<!-- /options:\2 -->)", re.S)


def markdown_table(command: Command) -> str:
    rows = ["| flag | env | default | meaning |", "|---|---|---|---|"]
    for option in command.options:
        flag = f"`{option.flag}`" + (f" / `--no-{option.name}`" if option.negatable else "")
        env = ", ".join(f"`{name}`" for name in command.env_names(option))
        default = "required" if option.required else f"`{option.shown_default()}`"
        rows.append(f"| {flag} | {env} | {default} | {option.help} |")
    return "\n".join(rows) + "\n"


def rewrite(text: str) -> str:
    def block(match: re.Match) -> str:
        return match.group(1) + markdown_table(COMMANDS[match.group(2)]) + match.group(4)

    return _BLOCK.sub(block, text)


def main(argv: list[str]) -> int:
    for name in argv or ["README.md"]:
        path = Path(name)
        path.write_text(rewrite(path.read_text()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
