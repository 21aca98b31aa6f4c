"""Sub-commands of the ``detoxedit`` CLI, one module per job.

Each module registers a function ``add(subparsers)`` in :data:`COMMANDS`, which adds its argparse parser
(whose ``func`` default runs the job); ``order`` places it in ``--help``. ``detoxedit.cli`` discovers the
modules of this package, so a new command is one new module.
"""

from detoxedit.registry import Registry

COMMANDS = Registry("command", "detoxedit.commands")
"""Command name -> ``add(subparsers)``; the entry's ``order`` attribute sets its place in ``--help``."""
