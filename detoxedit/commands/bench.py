"""``detoxedit bench``: run a detoxification method over a SafeEdit split, one record per case.

Resumable: rerun the same command and finished cases are skipped. ``--shard i/n`` lets n processes
split one run (each writes its own records file in the same RUN_DIR); ``detoxedit report RUN_DIR``
aggregates them. Started by a launcher (``torchrun --nproc-per-node N -m detoxedit bench ...`` or
``accelerate launch --multi_gpu -m detoxedit bench ...``), each process takes its shard from the launcher's
RANK/WORLD_SIZE and, with ``--device cuda``, the GPU cuda:LOCAL_RANK (``detoxedit.bench.launch``).
Every run flag is a field of ``detoxedit.config.RunConfig``.
"""

from __future__ import annotations

import argparse
import logging

from detoxedit.commands import COMMANDS

log = logging.getLogger(__name__)


@COMMANDS.register("bench", order=30)
def register(sub) -> None:
    from detoxedit.settings import add_run_arguments

    p = sub.add_parser("bench", help="run a method over a SafeEdit split (resumable, shardable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    p.add_argument("--shard", default=None,
                   help="i/n: this process runs cases i, i+n, i+2n, ... (under torchrun or accelerate launch "
                        "the launcher's RANK/WORLD_SIZE set it)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from detoxedit.bench.launch import (check_launch, cuda_index, launch_from_env, progress_shown,
                                        resolve_shard, use_cuda_device)
    from detoxedit.bench.runner import run_bench
    from detoxedit.settings import run_config

    cfg = run_config(args)
    launch = launch_from_env()
    shard = resolve_shard(args.shard, launch)  # a disagreeing --shard fails here, before any model work
    gpu = cuda_index(cfg.device, cfg.device_map, launch)
    check_launch(cfg, args.out, launch)
    if gpu is not None:
        use_cuda_device(gpu, launch)
    if launch is not None:
        where = f"cuda:{gpu}" if gpu is not None else (f"device map {cfg.device_map}" if cfg.device_map
                                                         else cfg.device)
        log.info("launched process %d of %d (%s): shard %d/%d on %s", launch.rank, launch.world_size,
                 launch.describe(), *shard, where)
    path = run_bench(cfg, args.out, shard, progress=not args.no_progress and progress_shown(launch))
    print(f"records: {path}" if path.exists() else f"records: none written by shard {shard[0]}/{shard[1]} "
          "(its cases were finished already)")
    if launch is None or launch.rank == 0:
        after = " (once every process has finished)" if launch is not None and launch.world_size > 1 else ""
        print(f"next: detoxedit report {args.out}{after}")
    return 0
