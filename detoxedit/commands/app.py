"""``detoxedit app``: a local web app (Gradio) to edit a prompt, read and label a run's answers, compare runs.

Needs the ``app`` extra: ``pip install 'detoxedit[app]'``. The model (``--model``) loads on the first
edit, once. ``--runs`` names run directories, or directories holding runs (default: ``./runs`` when it
exists); the page also takes any path typed in. The page serves on http://127.0.0.1:PORT; it reads and
writes files on this machine (runs, labels, saved edits), so keep it on localhost (``--host``).
"""

from __future__ import annotations

import argparse
import os

from detoxedit.commands import COMMANDS
from detoxedit.commands.edit import EDIT_DEFAULTS, EDIT_FLAGS


@COMMANDS.register("app", order=95)
def register(sub) -> None:
    from detoxedit.settings import add_run_arguments

    p = sub.add_parser("app", help="web app: edit a prompt, read and label a run's answers, compare runs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, only=EDIT_FLAGS, defaults=EDIT_DEFAULTS, run_config=False)
    p.add_argument("--runs", nargs="+", default=None, metavar="DIR",
                   help="run directories, or directories holding runs (default: ./runs when it exists)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default: 127.0.0.1, this machine only)")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging

    from detoxedit.app import editing, runs
    from detoxedit.commands.edit import check_method
    from detoxedit.errors import DetoxEditError
    from detoxedit.preflight import check_run
    from detoxedit.settings import run_config

    # everything the command line can get wrong fails here, before Gradio or a model loads
    if not 0 < args.port < 65536:
        raise DetoxEditError(f"--port must be 1..65535, not {args.port}")
    cfg = run_config(args, defaults=EDIT_DEFAULTS)
    editing.check_model_spec(cfg.model)  # a path that does not exist fails now, not on the first edit
    check_method(cfg)  # as `detoxedit edit`: a method that cannot edit one prompt, a missing artefact
    check_run(cfg, judge=False, splits=())
    paths = args.runs if args.runs is not None else (["runs"] if os.path.isdir("runs") else [])
    missing = [d for d in paths if not os.path.isdir(os.path.expanduser(d))]
    if missing:
        raise DetoxEditError(f"--runs: {', '.join(missing)} is not a directory")
    run_dirs = runs.find_runs(paths)

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the app never calls home
    try:
        from detoxedit.app import ui  # imports Gradio
    except ImportError as err:
        if (err.name or "").split(".")[0] != "gradio":
            raise
        raise DetoxEditError("the app needs Gradio: pip install 'detoxedit[app]'") from None
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to itself at start-up
    page = ui.build(editing.ModelSession(cfg), run_dirs)
    print(f"detoxedit app: model {cfg.model} (loads on the first edit), {len(run_dirs)} run(s); "
          f"open http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    try:
        ui.launch(page, args.host, args.port)
    except OSError as err:
        raise DetoxEditError(f"cannot serve on {args.host}:{args.port} ({err}); choose another --port") from None
    return 0
