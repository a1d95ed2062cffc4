"""Every command's options table, by command name: what ``resolve``, ``config check``
and the README generator iterate over. A command whose table lives in a module of its
own (to keep modules small) is registered here, and only here."""

from __future__ import annotations

from hqm.config.tables import DLQ, PROXY, WORKER, Command
from hqm.config.tables_iptables import IPTABLES
from hqm.config.tables_status import STATUS

COMMANDS: dict[str, Command] = {
    command.name: command for command in (PROXY, WORKER, DLQ, IPTABLES, STATUS)
}
