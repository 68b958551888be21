"""Data-parallel training: two processes (Gloo, CPU) take the same steps as one process on the global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from diffedu import distributed
from diffedu.device_data import DeviceImages
from diffedu.models.unet import UNet, UNetConfig
from diffedu.schedules import make_schedule
from diffedu.train import TrainConfig, draw_batch, load_checkpoint, train

S = make_schedule("linear", 50)
PIXELS = torch.randint(0, 256, (40, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
LABELS = torch.arange(40) % 3


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(image_size=8, in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                           norm_groups=4, num_classes=3))


def config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, warmup_steps=2, lr=3e-3, ema_decay=0.9, flip=True,
                       cond_drop_prob=0.2, checkpoint_every=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One torchrun-like process: environment, process group, then the ordinary `train` call."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    try:
        assert info.enabled and info.rank == rank and dist.get_backend() == "gloo"
        path = os.path.join(folder, "ddp.pt")
        first = train(tiny_unet(), PIXELS, S, config(3), labels=LABELS, checkpoint=path, device="cpu", progress=False)
        assert (first.ema is None) == (rank != 0)
        result = train(tiny_unet(), PIXELS, S, config(5), labels=LABELS, checkpoint=path, device="cpu",
                       progress=False)  # resumes at step 3
        torch.save({"params": [p.detach() for p in result.model.parameters()], "losses": result.losses,
                    "step": result.step}, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


@pytest.mark.skipif(not hasattr(os, "fork") or not dist.is_available(), reason="needs fork and torch.distributed")
def test_two_processes_take_the_steps_of_one_process_on_the_global_batch(tmp_path):
    single = train(tiny_unet(), PIXELS, S, config(5), labels=LABELS, device="cpu", progress=False)
    # fork: the children inherit the imported modules (spawn would import torch again, seconds each)
    mp.start_processes(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == single.step == 5
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):  # the ranks agree exactly (DDP all-reduce)
        assert torch.equal(a, b)
    for a, b in zip(ranks[0]["params"], single.model.parameters()):  # ... and with one process
        assert torch.allclose(a, b.detach(), atol=1e-5), (a - b).abs().max()
    assert ranks[0]["losses"] == pytest.approx(single.losses, abs=1e-5)  # global-batch losses, resumed at 3
    state = load_checkpoint(tmp_path / "ddp.pt")  # rank 0 wrote it, with the EMA
    assert state["step"] == 5 and len(state["losses"]) == 5 and "n_averaged" in state["ema"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt", "rank0.pt", "rank1.pt"]


def test_each_rank_takes_its_own_slice_of_the_same_global_draws():
    data = DeviceImages(PIXELS, LABELS)
    whole = draw_batch(data, 8, S, torch.Generator().manual_seed(3), flip=True, cond_drop_prob=0.5, null_label=3)
    parts = [draw_batch(data, 8, S, torch.Generator().manual_seed(3), flip=True, cond_drop_prob=0.5, null_label=3,
                        rank=r, world_size=2) for r in range(2)]
    for k in range(4):  # x0, cond, t, eps
        assert torch.equal(torch.cat([parts[0][k], parts[1][k]]), whole[k])
    with pytest.raises(ValueError, match="divisible"):
        draw_batch(data, 7, S, torch.Generator(), rank=0, world_size=2)


def test_without_torchrun_there_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init_distributed("cpu")
    assert not info.enabled and info.is_main and info.world_size == 1 and not dist.is_initialized()
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    x = torch.arange(3.0)
    assert distributed.all_reduce_mean(x, info) is x and distributed.any_rank([True, False], info) == [True, False]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_distributed("cpu")
