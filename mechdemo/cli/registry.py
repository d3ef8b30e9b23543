"""The command registry: each command module registers its commands here (see :mod:`mechdemo.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

NOTHING_CHANGED = "nothing was changed"


@dataclass(frozen=True)
class Command:
    """One ``mechdemo`` command (or one action of a command group, ``mechdemo sae train``)."""

    configure: Callable[[argparse.ArgumentParser], None]  # adds the command's arguments
    run: Callable[[argparse.Namespace], int]
    help: str
    kept: str = NOTHING_CHANGED  # after an interruption or a full disk: what survives, what rerunning does


COMMANDS: dict[str, Command] = {}
GROUPS: dict[str, tuple[str, dict[str, Command]]] = {}  # group -> (help, {action: command})


def command(name: str, help: str, run: Callable[[argparse.Namespace], int], kept: str = NOTHING_CHANGED,
            group: str | None = None, group_help: str = "") -> Callable:
    """Register the decorated ``configure(parser)`` as ``mechdemo <name>`` (or ``mechdemo <group> <name>``),
    executed by ``run``; ``kept`` says what an interruption keeps."""

    def register(configure):
        cmd = Command(configure, run, help, kept)
        if group is None:
            COMMANDS[name] = cmd
        else:
            GROUPS.setdefault(group, (group_help, {}))[1][name] = cmd
        return configure

    return register


def print_json(data: Any) -> None:
    """Exactly one JSON document on standard output (progress and logs go to standard error)."""
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
