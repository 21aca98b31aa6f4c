"""Scaling out on an existing launcher: shard and GPU from torchrun's / accelerate's environment.

Unit tests of the environment -> shard / device rules (``detoxedit.bench.launch``), the CLI refusing a
bad combination before any model work, the report reading shards in case order, and one real
``torchrun --nproc-per-node 2 -m detoxedit bench`` on test_runner's tiny model and 6-case data.
"""

import json
import os
import subprocess
import sys

import pytest

from test_runner import setup  # noqa: F401  (the fixture)
from detoxedit.bench.launch import (Launch, check_launch, cuda_index, launch_from_env, progress_shown,
                                    resolve_shard, use_cuda_device)
from detoxedit.bench.records import read_run_records
from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def env(rank, world, local_rank=None, local_world=None) -> dict:
    values = (rank, world, local_rank, local_world)
    return {k: str(v) for k, v in zip(LAUNCH_VARS, values) if v is not None}


# --- the launcher's environment -----------------------------------------------------------------------


def test_no_launcher_variables_mean_no_launch():
    assert launch_from_env({}) is None
    assert launch_from_env({"PATH": "/bin", "LOCAL_RANK": "0"}) is None  # LOCAL_RANK alone decides nothing


def test_torchrun_variables_are_read():
    launch = launch_from_env(env(3, 8, 1, 4))
    assert launch == Launch(rank=3, world_size=8, local_rank=1, local_world_size=4)
    assert launch.shard == (3, 8) and launch.several_per_node
    assert not launch_from_env(env(1, 4, 0, 1)).several_per_node  # one process per node
    assert launch_from_env(env(1, 2)).several_per_node  # unknown: assume they share the node


@pytest.mark.parametrize("bad, message", [
    ({"RANK": "1"}, "sets RANK but not WORLD_SIZE"),
    ({"WORLD_SIZE": "2"}, "sets WORLD_SIZE but not RANK"),
    (env(2, 2), "out of range"),
    (env(-1, 2), "out of range"),
    (env(0, 0), "out of range"),
    ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
    (env(1, 2, 2, 2), "local ranks are out of range"),
])
def test_half_or_bad_launcher_variables_are_refused(bad, message):
    with pytest.raises(DetoxEditError, match=message):
        launch_from_env(bad)


# --- the shard: launcher, --shard, or both --------------------------------------------------------------


def test_shard_precedence():
    two = Launch(1, 2, 1, 2)
    assert resolve_shard(None, None) == (0, 1)  # no launcher, no --shard: unchanged
    assert resolve_shard("2/4", None) == (2, 4)  # --shard by hand: unchanged
    assert resolve_shard(None, two) == (1, 2)  # the launcher's rank
    assert resolve_shard("1/2", two) == (1, 2)  # both, agreeing
    assert resolve_shard("2/4", Launch(0, 1, 0, 1)) == (2, 4)  # a launch of one process splits nothing
    assert resolve_shard(None, Launch(0, 1, 0, 1)) == (0, 1)
    for text in ("0/2", "1/4", "0/1"):
        with pytest.raises(DetoxEditError, match=f"--shard {text} disagrees with the launcher"):
            resolve_shard(text, two)
    with pytest.raises(DetoxEditError, match="must look like i/n"):
        resolve_shard("1-2", two)


# --- the device -------------------------------------------------------------------------------------------


def test_device_cuda_takes_the_local_rank_and_other_devices_are_left_alone():
    node = Launch(5, 8, 1, 4)
    assert cuda_index("cuda", None, node) == 1
    assert cuda_index("cuda", None, None) is None  # no launcher: unchanged
    assert cuda_index("cpu", None, node) is None
    assert cuda_index("cuda", None, Launch(0, 1)) == 0  # one process, no LOCAL_RANK: the first GPU
    assert cuda_index("cuda:3", None, Launch(1, 4, 0, 1)) is None  # alone on its node: as given
    with pytest.raises(DetoxEditError, match="names one GPU for every process"):
        cuda_index("cuda:0", None, node)
    with pytest.raises(DetoxEditError, match="needs LOCAL_RANK"):
        cuda_index("cuda", None, Launch(1, 2))


def test_device_map_works_with_one_process_per_node_only():
    assert cuda_index("cuda", "auto", None) is None
    assert cuda_index("cuda", "auto", Launch(0, 1, 0, 1)) is None
    assert cuda_index("cuda", "auto", Launch(1, 2, 0, 1)) is None  # two nodes, one process each
    for launch in (Launch(1, 2, 1, 2), Launch(1, 2)):
        with pytest.raises(DetoxEditError, match="cannot combine with several processes per node"):
            cuda_index("cuda", "auto", launch)


def test_a_missing_gpu_is_one_clear_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(DetoxEditError, match="sees no CUDA GPU"):
        use_cuda_device(0, Launch(0, 2, 0, 2))


def test_one_progress_bar_per_node():
    assert progress_shown(None) and progress_shown(Launch(0, 2, 0, 2)) and progress_shown(Launch(2, 4, 0, 2))
    assert not progress_shown(Launch(1, 2, 1, 2))


def test_methods_that_train_need_their_artefact_before_a_multi_process_launch(tmp_path):
    cfg = RunConfig(method="sft")
    check_launch(cfg, tmp_path / "run", None)  # one process trains it itself
    check_launch(cfg, tmp_path / "run", Launch(0, 1, 0, 1))
    with pytest.raises(DetoxEditError, match="trains on a split before it edits"):
        check_launch(cfg, tmp_path / "run", Launch(0, 2, 0, 2))
    art = tmp_path / "art"
    art.mkdir()
    (art / "artifact.json").write_text("{}")
    check_launch(RunConfig(method="sft", artifact=str(art)), tmp_path / "run", Launch(0, 2, 0, 2))
    check_launch(RunConfig(method="dinm"), tmp_path / "run", Launch(0, 2, 0, 2))  # nothing to train


# --- the command refuses before any model work ------------------------------------------------------------


@pytest.mark.parametrize("extra, launcher, message", [
    (["--shard", "0/4"], env(1, 2, 1, 2), "--shard 0/4 disagrees with the launcher"),
    (["--device-map", "auto"], env(1, 2, 1, 2), "cannot combine with several processes per node"),
    (["--device", "cuda:0"], env(1, 2, 1, 2), "names one GPU for every process"),
    (["--device", "cuda"], env(1, 2, 1, 2), "sees no CUDA GPU"),
])
def test_bench_refuses_a_bad_launch_in_one_line_before_model_work(tmp_path, monkeypatch, capsys, extra, launcher,
                                                                   message):
    import torch

    from detoxedit.cli import main

    if message == "sees no CUDA GPU" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    for k, v in launcher.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "run"
    rc = main(["bench", "--model", str(tmp_path / "no-such-model"), "--judge", "refusal", "--out", str(out),
               "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing written: the model (which does not even exist) was never loaded


# --- the report reads shards in case order ---------------------------------------------------------------


def test_report_metrics_do_not_depend_on_how_the_cases_were_sharded(tmp_path):
    """The bootstrap draws cases by position, so shard files must read back in the split's case order."""
    from detoxedit.bench.records import records_path
    from detoxedit.bench.report import compute_metrics
    from detoxedit.io import append_jsonl

    keys = ("DS", "DG_onlyQ")

    def rec(i):  # labels that differ from case to case, so that the order matters to the intervals
        return {"case_id": str(i), "index": i, "category": "c" + str(i % 2),
                "labels": {"j": {"vanilla": {k: float((i + n) % 3 == 0) for n, k in enumerate(keys)},
                                 "edited": {k: float((i * n) % 4 == 1) for n, k in enumerate(keys)}}},
                "fluency": {"vanilla": 1.0 + i / 7, "edited": 2.0 - i / 9}, "edit": {"layer": i % 3}}

    whole, sharded = tmp_path / "one", tmp_path / "three"
    for i in range(11):
        append_jsonl(records_path(whole, (0, 1)), rec(i))
        append_jsonl(records_path(sharded, (i % 3, 3)), rec(i))
    one, three = read_run_records(whole), read_run_records(sharded)
    assert [r["case_id"] for r in three] == [str(i) for i in range(11)]
    assert compute_metrics(one, "j") == compute_metrics(three, "j")


# --- a real torchrun launch ------------------------------------------------------------------------------


def _bench_args(cfg, out) -> list[str]:
    return ["bench", "--model", cfg.model, "--data", cfg.data, "--split", "test", "--judge", "refusal",
            "--max-new-tokens", "6", "--overrefusal-items", "2", "--hparam", "num_steps=2", "--hparam", "lr=0.01",
            "--hparam", "max_length=96", "--hparam", "step_size=fixed", "--out", str(out)]


def test_torchrun_two_processes_split_the_cases_and_report_merges_them(setup):
    """``torchrun --nproc-per-node 2 -m detoxedit bench``: two shard files, every case exactly once, one
    "next:" hint, and the same report metrics as one ``python -m detoxedit bench`` process on the same cases."""
    from detoxedit.cli import main

    cfg, tmp = setup
    child_env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"OMP_NUM_THREADS": "1"}
    one = tmp / "one-process"
    rc = subprocess.run([sys.executable, "-m", "detoxedit", *_bench_args(cfg, one), "--no-progress"],
                        env=child_env, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert f"next: detoxedit report {one}" in rc.stdout and (one / "records.jsonl").is_file()

    two = tmp / "torchrun"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "detoxedit"]
    rc = subprocess.run(launcher + _bench_args(cfg, two), env=child_env, capture_output=True, text=True,
                        timeout=600)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    shard_files = sorted(p.name for p in two.glob("records*.jsonl"))
    assert shard_files == ["records.shard-0-of-2.jsonl", "records.shard-1-of-2.jsonl"]
    per_file = {name: [json.loads(x)["case_id"] for x in (two / name).read_text().splitlines()]
                for name in shard_files}
    assert per_file == {"records.shard-0-of-2.jsonl": ["0", "2", "4"], "records.shard-1-of-2.jsonl": ["1", "3", "5"]}
    assert rc.stdout.count("next: detoxedit report") == 1  # rank 0 only; each rank names its own file
    assert all(f"records: {two / name}" in rc.stdout for name in shard_files)
    assert "shard 1/2 on cpu" in rc.stderr  # each process says which shard it took

    # `report` merges the shards into the same numbers as one process (timings aside)
    assert main(["report", str(two)]) == 0 and main(["report", str(one)]) == 0
    merged, single = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    for m in (merged, single):
        m.pop("seconds_per_case")
    assert merged["n_cases"] == 6 and merged["overrefusal"]["n_edits"] == 6
    assert merged == single

    # resume: the same launch again finds every case finished and adds nothing
    rc = subprocess.run(launcher + _bench_args(cfg, two), env=child_env, capture_output=True, text=True,
                        timeout=600)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert sorted(int(r["case_id"]) for r in read_run_records(two)) == list(range(6))
    assert sum((two / name).read_text().count("\n") for name in shard_files) == 6
