"""``python -m detoxedit``: the ``detoxedit`` command, for launchers that start a module rather than a
script (``torchrun -m detoxedit bench ...``, ``accelerate launch -m detoxedit bench ...``)."""

import sys

from detoxedit.cli import main

if __name__ == "__main__":
    sys.exit(main())
