"""This process's shard and GPU when a launcher (``torchrun``, ``accelerate launch``) started it.

A benchmark run needs no communication between processes: its cases are split by shard (every n-th case
from i, :func:`detoxedit.cases.select_records`), each process appends to its own records file, and
``detoxedit report`` merges the files. So we use an existing launcher only to start the processes, on one
node or many, and read who each process is from the environment it sets (torchrun does, and ``accelerate
launch --multi_gpu`` runs torchrun underneath, so both set the same variables):

* ``RANK`` and ``WORLD_SIZE``: this process's number among all processes (across nodes) and their count;
  the process runs shard ``RANK/WORLD_SIZE``;
* ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``: its number among the processes of its node and their count;
  with ``--device cuda`` it takes GPU ``cuda:LOCAL_RANK``.

No ``torch.distributed`` process group is created. With none of these variables set nothing changes: one
process, ``--shard i/n`` as given.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from detoxedit.config import RunConfig, parse_shard
from detoxedit.errors import DetoxEditError

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
"""The launcher variables read here (torchrun's names; ``accelerate launch`` sets the same)."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a launch: ranks from the launcher's environment."""

    rank: int
    world_size: int
    local_rank: int | None = None
    """None when the launcher did not set ``LOCAL_RANK``."""
    local_world_size: int | None = None
    """None when the launcher did not set ``LOCAL_WORLD_SIZE``."""

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    @property
    def several_per_node(self) -> bool:
        """Whether other processes of this launch may share this node's GPUs (True when unknown)."""
        return self.world_size > 1 and self.local_world_size != 1

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in zip(ENV_VARS, (self.rank, self.world_size, self.local_rank,
                                                               self.local_world_size)) if v is not None)


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise DetoxEditError(f"the launcher's {name}={text!r} is not an integer") from None


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to, from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``
    (``os.environ`` unless ``environ`` is given); None when neither ``RANK`` nor ``WORLD_SIZE`` is set.

    Half a launcher environment (one of the two) or values out of range are refused: a process that
    guessed its rank could run another process's cases twice or skip its own.
    """
    env = os.environ if environ is None else environ
    rank, world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
    if rank is None and world is None:
        return None
    if rank is None or world is None:
        have, miss = ("RANK", "WORLD_SIZE") if world is None else ("WORLD_SIZE", "RANK")
        raise DetoxEditError(f"the environment sets {have} but not {miss}; start the processes with torchrun "
                             f"or accelerate launch (which set both), or unset {have}")
    local_rank, local_world = _int_env(env, "LOCAL_RANK"), _int_env(env, "LOCAL_WORLD_SIZE")
    launch = Launch(rank, world, local_rank, local_world)
    if world < 1 or not 0 <= rank < world:
        raise DetoxEditError(f"the launcher's ranks are out of range ({launch.describe()}): need 0 <= RANK < "
                             "WORLD_SIZE")
    if local_rank is not None and (local_rank < 0 or (local_world is not None and local_rank >= local_world)):
        raise DetoxEditError(f"the launcher's local ranks are out of range ({launch.describe()})")
    return launch


def resolve_shard(text: str | None, launch: Launch | None) -> tuple[int, int]:
    """The shard ``(i, n)`` this process runs: the launcher's ``(RANK, WORLD_SIZE)`` when it started more
    than one process, else ``--shard`` (``text``), else ``(0, 1)``.

    ``--shard`` under a multi-process launch must name the launcher's shard; any other value is refused,
    since the two cannot both hold. A launch of one process (``WORLD_SIZE=1``) splits nothing, so a
    ``--shard`` given with it stands (one GPU working through shard i of a split made by hand).
    """
    manual = parse_shard(text) if text is not None else None
    if launch is None or launch.world_size == 1:
        return manual or (0, 1)
    if manual is not None and manual != launch.shard:
        i, n = launch.shard
        raise DetoxEditError(f"--shard {text} disagrees with the launcher ({launch.describe()}, i.e. shard "
                             f"{i}/{n}); under torchrun or accelerate launch drop --shard: each process takes "
                             "its shard from its rank")
    return launch.shard


def cuda_index(device: str, device_map: str | None, launch: Launch | None) -> int | None:
    """The GPU this process must make current (``cuda:LOCAL_RANK``), or None to place the model as the
    run's ``device``/``device_map`` say. Refuses placements that cannot work under the launch.

    * ``--device cuda`` (no index): under a launcher, GPU ``LOCAL_RANK`` (0 for a launch of one process
      without it). The run's config keeps ``device: cuda``, the same in every process.
    * ``--device cuda:K``: kept as given by a process alone on its node; refused when several processes
      share the node, as they would all pile onto GPU K.
    * ``--device-map``: places one model across all of a node's GPUs, so it works with one process per
      node (``torchrun --nproc-per-node 1``, any number of nodes: each node runs one shard); refused when
      several processes share a node, as each would spread its model over the same GPUs.
    * any other device (``cpu``) is left alone.
    """
    if launch is None:
        return None
    if device_map is not None:
        if launch.several_per_node:
            raise DetoxEditError(
                f"--device-map {device_map} spreads one model over all of a node's GPUs, which cannot combine "
                f"with several processes per node ({launch.describe()}): use --device cuda (each process takes "
                "cuda:LOCAL_RANK), or start one process per node (torchrun --nproc-per-node 1) for a model "
                "too big for one GPU")
        return None
    device = str(device)
    if device == "cuda":
        if launch.local_rank is None:
            if launch.world_size > 1:
                raise DetoxEditError(f"--device cuda under a launch of {launch.world_size} processes needs "
                                     "LOCAL_RANK to pick each process's GPU; the launcher did not set it")
            return 0
        return launch.local_rank
    if device.startswith("cuda:") and launch.several_per_node:
        raise DetoxEditError(f"--device {device} names one GPU for every process on the node "
                             f"({launch.describe()}); use --device cuda: each process takes cuda:LOCAL_RANK")
    return None


def use_cuda_device(index: int, launch: Launch) -> None:
    """Make ``cuda:index`` this process's current GPU, so that ``cuda`` (the model, the judge, every tensor
    a method creates on ``"cuda"``) means that GPU; refused with one line when it does not exist."""
    import torch

    if not torch.cuda.is_available():
        raise DetoxEditError(f"--device cuda, but this process sees no CUDA GPU ({launch.describe()})")
    count = torch.cuda.device_count()
    if index >= count:
        raise DetoxEditError(f"this process should take cuda:{index} ({launch.describe()}) but its node shows "
                             f"{count} GPU(s); start at most {count} processes per node")
    torch.cuda.set_device(index)


def check_launch(cfg: RunConfig, run_dir: str | Path, launch: Launch | None) -> None:
    """Refuse, before any model work, what several processes of one launch cannot do together.

    A method that trains on a split first (MEND, SFT, DPO, Ext-Sub) trains when its artefact is missing;
    every process would then train the same artefact into the same directory and race to rename it into
    place. Under a multi-process launch the artefact must exist first (``detoxedit train``, or one
    process of ``bench``, which trains it into ``RUN_DIR/artifact``).
    """
    if launch is None or launch.world_size == 1:
        return
    from detoxedit.bench.training import MANIFEST, artifact_dir
    from detoxedit.methods.base import needs_training
    from detoxedit.settings import prepare_method

    method = prepare_method(dataclasses.replace(cfg, hparams=dict(cfg.hparams)))  # leaves cfg as it was
    target = artifact_dir(cfg, Path(run_dir))
    if needs_training(method.editor) and not (target / MANIFEST).is_file():
        raise DetoxEditError(
            f"method {cfg.method} trains on a split before it edits, and {target} holds no trained artefact: "
            f"{launch.world_size} processes would each train it into the same place. Train it once first "
            f"(detoxedit train --method {cfg.method} ... --out DIR, then launch with --artifact DIR), or run "
            "this bench once without the launcher until training is done (it trains into RUN_DIR/artifact), "
            "then launch again")


def progress_shown(launch: Launch | None) -> bool:
    """Whether this process draws a progress bar: only one per node (``LOCAL_RANK`` 0), since the bars of
    processes writing to one console would overwrite each other; the others log their start and end."""
    return launch is None or (launch.local_rank or 0) == 0
