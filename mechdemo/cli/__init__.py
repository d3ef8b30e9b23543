"""The ``mechdemo`` command (also ``python -m mechdemo``).

One module per command group (``models``, ``figures``, ``heads``, ``ioi``, ``circuit``, ``data``:
extract and dataset, ``sae``: train, eval and browse, ``anatomy``, ``generate``): each command parses
its arguments, calls one library function and prints. Analysis commands take ``--json`` and then
print exactly one JSON document on standard output (progress and logs go to standard error).

Errors the user can fix are printed as one paragraph naming the fix, without a traceback, and exit
with status 2; an interruption (Ctrl-C) or a full disk says what the command keeps (each command
states it when it registers) and exits 130 or 2; anything else is a bug, printed with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mechdemo import __version__
from mechdemo.cli import anatomy, circuit, data, figures, generate, heads, ioi, models, sae  # noqa: F401 (register)
from mechdemo.cli.registry import COMMANDS, GROUPS, NOTHING_CHANGED, Command
from mechdemo.errors import MechdemoError

log = logging.getLogger("mechdemo")

__all__ = ["COMMANDS", "GROUPS", "Command", "build_parser", "main"]

# the order of `mechdemo --help`: from the lecture's start to its end
ORDER = ("models", "anatomy", "generate", "heads", "ioi", "circuit", "extract", "dataset", "sae", "figures")


def _add(sub, name: str, cmd: Command) -> None:
    p = sub.add_parser(name, help=cmd.help, description=cmd.help)
    cmd.configure(p)
    p.set_defaults(run=cmd.run, kept=cmd.kept)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mechdemo",
                                     description="Mechanistic interpretability lecture: models, analyses and figures.")
    parser.add_argument("--version", action="version", version=f"mechdemo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted([*COMMANDS, *GROUPS], key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        if name in COMMANDS:
            _add(sub, name, COMMANDS[name])
            continue
        help_text, actions = GROUPS[name]
        g = sub.add_parser(name, help=help_text, description=help_text)
        g_sub = g.add_subparsers(dest="action", metavar="ACTION", required=True)
        for name, cmd in actions.items():
            _add(g_sub, name, cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    kept = getattr(args, "kept", NOTHING_CHANGED)
    try:
        return int(args.run(args) or 0)
    except MechdemoError as err:
        print(f"mechdemo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mechdemo: interrupted; {kept}", file=sys.stderr)
        return 130
    except OSError as err:
        if (problem := storage_problem(err)) is None:
            return report_bug()
        print(f"mechdemo: error: {problem}: free some space (or choose a writable --out) and rerun the same "
              f"command; {kept}", file=sys.stderr)
        return 2
    except Exception:  # not the user's mistake: a bug, with everything needed to report it
        return report_bug()


def storage_problem(err: OSError) -> str | None:
    """A full or read-only disk is the user's to fix, not a bug: say which file, without a traceback."""
    import errno

    text = str(err)
    full = err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text
    read_only = err.errno == errno.EROFS or "Read-only file system" in text
    if not (full or read_only):
        return None
    where = f" writing {err.filename}" if err.filename else ""
    return ("no space left on the device" if full else "the file system is read-only") + where


def report_bug() -> int:
    import traceback

    traceback.print_exc()
    print(f"mechdemo {__version__}: this is a bug in mechdemo, not something you did wrong; please report it "
          "with the command and the traceback above.", file=sys.stderr)
    return 1
