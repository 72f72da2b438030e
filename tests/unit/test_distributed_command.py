"""Several machines: --nnodes, --rdzv-endpoint and --rdzv-id reach torch.distributed.run."""

from __future__ import annotations

import pytest

from workbench.cli.common import train_config
from workbench.cli.main import build_parser
from workbench.jobs import queue
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig


class _Finished:
    pid, returncode = 0, 0

    def poll(self):
        return 0


def test_distributed_command_multi_node_flags_reach_torchrun(tmp_path, monkeypatch):
    args = build_parser("distill")[0].parse_args(["distill", "--dataset", "digits", "--model", "mlp", "--nproc", "2",
                                      "--nnodes", "2", "--rdzv-endpoint", "node0.example:29400",
                                      "--rdzv-id", "job7", "--no-scratch"])
    config = train_config(args, "kd", 0)
    assert (config.nnodes, config.rdzv_endpoint, config.rdzv_id) == ("2", "node0.example:29400", "job7")
    store = RunStore(tmp_path / "runs")
    run = store.create(config.record(), run_id="mn")
    assert TrainConfig.from_dict(run.config).nnodes == "2"  # the job reads them back from config.json
    launched = []
    monkeypatch.setattr(queue, "spawn", lambda command, *a, **k: launched.append(command.to_argv()) or _Finished())
    queue._launch_distributed(run, store, TrainConfig.from_dict(run.config), resume=False)
    (cmd,) = launched
    assert cmd[cmd.index("torch.distributed.run") + 1:][:5] == [
        "--nproc-per-node=2", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0.example:29400",
        "--rdzv-id=job7"]
    assert "--standalone" not in cmd


def test_distributed_command_rdzv_id_defaults_to_the_run_id(tmp_path):
    store = RunStore(tmp_path / "runs")
    run = store.create(TrainConfig(teacher="digits-cnn").record(), run_id="r1")
    cmd = queue.distributed_command(run, store, 2, rdzv_endpoint="h:1").to_argv()
    assert "--rdzv-id=r1" in cmd
    assert "--standalone" in queue.distributed_command(run, store, 2).to_argv()
    assert cmd[:2] == [queue.sys.executable, "-P"] and cmd[cmd.index("-m", 3) + 1:][:3] == ["workbench", "rank", "r1"]


@pytest.mark.parametrize("field,value", [("nnodes", "two"), ("rdzv_endpoint", "nohost"), ("rdzv_id", "a b")])
def test_distributed_command_bad_multi_node_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(teacher="digits-cnn", **{field: value})
