"""``detoxedit report RUN_DIR``: tables, plots, a self-contained HTML report and a Markdown summary."""

from __future__ import annotations

from detoxedit.commands import COMMANDS
from detoxedit.settings import run_flag_help


@COMMANDS.register("report", order=50)
def register(sub) -> None:
    p = sub.add_parser("report", help="aggregate a run into metrics.json, summary.md and report.html")
    p.add_argument("run_dir")
    p.add_argument("--judge", default=None, help=run_flag_help("judge", "whose labels to report (default: the run's judge)"))
    p.set_defaults(func=run)


def run(args) -> int:
    from detoxedit.bench.report import write_report

    files = write_report(args.run_dir, judge=args.judge)
    print(files["summary"].read_text())
    print(f"report: {files['html']}\nsummary: {files['summary']}\nmetrics: {files['metrics']}")
    return 0
