"""A converted model under torch.nn.parallel.DistributedDataParallel: two CPU processes over
gloo stay identical, and equal one process that trains on their combined batches."""

import copy
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fastconv
import fastconv.torch as ft

pytestmark = pytest.mark.slow  # DDP runs in subprocesses

PROCESSES, STEPS, BATCH = 2, 3, 6  # BATCH images per process and step


def _converted_net():
    """A small float64 conv net (float64 so that the sums' order leaves no visible error) with
    every conv and pool on fastconv."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(6 * 3 * 3, 10))
    return ft.convert(net.double())


def _fastconv_layers(net):
    """The types of ``net``'s conv and pooling layers."""
    return [type(m) for m in net if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]


FASTCONV_LAYERS = [ft.Conv2d, ft.MaxPool2d, ft.Conv2d, ft.AvgPool2d]


def _batches():
    """STEPS batches of PROCESSES * BATCH random images and labels."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, PROCESSES * BATCH, 1, 14, 14, generator=generator,
                    dtype=torch.float64)
    return x, torch.randint(0, 10, (STEPS, PROCESSES * BATCH), generator=generator)


def _train(model, rank=0, processes=1):
    """SGD with momentum; each process takes every ``processes``-th image of a batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in zip(*_batches(), strict=True):
        loss = F.cross_entropy(model(x[rank::processes]), y[rank::processes])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _process(rank, net, port, out):
    """One of the PROCESSES: train ``net`` under DDP and save its state_dict to ``out``."""
    # One thread each: the processes share the test machine's cores.
    torch.set_num_threads(1)
    fastconv.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=PROCESSES, timeout=timedelta(seconds=60))
    try:
        # spawn hands the net over in shared memory: each process trains a copy of its own
        net = copy.deepcopy(net)
        assert _fastconv_layers(net) == FASTCONV_LAYERS  # still fastconv's once unpickled
        model = DistributedDataParallel(net)
        _train(model, rank, PROCESSES)
        torch.save(net.state_dict(), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_each_other_and_one_process_on_the_whole_batch(tmp_path):
    net = _converted_net()
    assert _fastconv_layers(net) == FASTCONV_LAYERS
    initial = {name: value.clone() for name, value in net.state_dict().items()}
    with socket.socket() as s:  # a port free now, for the processes to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn pickles the converted net into each process, as a user's launcher would
    mp.spawn(_process, args=(net, port, tmp_path), nprocs=PROCESSES)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(PROCESSES)]

    _train(net)
    trained = net.state_dict()
    assert trained.keys() == ranks[0].keys()
    for name, value in trained.items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        assert all(torch.equal(rank[name], ranks[0][name]) for rank in ranks), name
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-10, atol=1e-12, msg=name)
