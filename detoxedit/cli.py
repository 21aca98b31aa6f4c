"""The ``detoxedit`` command: one sub-command per job.

Each sub-command lives in its own module of ``detoxedit.commands``, registered in ``COMMANDS``
(discovered on first use); its entry adds an argparse parser whose ``func`` default runs the job. Heavy imports (torch, transformers) happen
inside the job functions, so ``detoxedit --help`` is instant. Logging and seeds are set here, in
``main``, never at import time.
"""

from __future__ import annotations

import argparse
import logging
import sys

from detoxedit.errors import DetoxEditError

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detoxedit",
        description="Detoxify LLMs by knowledge editing (SafeEdit / DINM).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from detoxedit.commands import COMMANDS

    for name in sorted(COMMANDS.names(), key=lambda n: (getattr(COMMANDS[n], "order", 100), n)):
        COMMANDS[name](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # rouge-score logs one INFO line per scorer through absl; keep the console for our own messages.
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except DetoxEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
