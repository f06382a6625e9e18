"""Data-parallel training of the converted LeNet-5 (examples/train_converted_lenet.py) with
torch.nn.parallel.DistributedDataParallel: each process runs fastconv's kernels on its share of
every batch, DDP averages the gradients, and every process takes the same Adam step.

On CPUs the processes talk over gloo. Start them with torchrun, or let the script spawn them:

    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py --epochs 2
    python examples/ddp_train.py --nproc 2 --epochs 2

On several GPUs the backend is NCCL: one process per GPU, started with torchrun
(--nproc_per_node = the GPUs of a node; --nnodes and --rdzv-endpoint for several nodes) and
--device cuda: fastconv.torch then runs its CUDA kernels on each process's GPU, queued on
torch's stream (not yet run on a GPU: see the README's "On the GPU").

All processes read the same shuffled order of the training set (fastconv.data.Batches, seeded
by --seed and the epoch) in batches of batch-size x processes images, and each takes every
N-th image of a batch: the run is the one-process run at that batch size, split N ways.
Process 0 prints the progress, the epoch times and the test accuracy.
"""

import os
import socket
import time

# before torch, as in train_converted_lenet.py: torch then shares fastconv's OpenMP runtime
from train_converted_lenet import accuracy, arguments, build, load, set_threads, train_epoch

# isort: split
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel


def run(rank, processes, args):
    """One process of the group: join it, train, and on rank 0 report."""
    local_rank = int(os.environ.get("LOCAL_RANK", rank))  # torchrun's; spawned ones are local
    set_threads(args.threads, int(os.environ.get("LOCAL_WORLD_SIZE", processes)))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    # MASTER_ADDR and MASTER_PORT come from torchrun or from main() below.
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=processes)
    try:
        train, test = load(args, processes)
        net = build(args).to(torch.device("cuda", local_rank) if cuda else "cpu")
        ddp = DistributedDataParallel(net, device_ids=[local_rank] if cuda else None)
        optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)
        if rank == 0:
            print(f"LeNet-5, {'PyTorch' if args.unconverted else 'fastconv'} layers, "
                  f"{processes} processes ({dist.get_backend()}), {len(train.images)} training "
                  f"images, batch {args.batch_size} x {processes}", flush=True)
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            loss = train_epoch(ddp, optimizer, train, rank, processes)
            seconds = time.perf_counter() - start
            if rank == 0:  # the others go on and wait for it at the next step's all-reduce
                print(f"epoch {epoch}: {seconds:.1f} s, train loss {loss:.4f} (rank 0's "
                      f"images), test accuracy {accuracy(net, test):.4f}", flush=True)
        # Leave together: a process that tore its side of the group down and exited while
        # rank 0 still evaluated was seen to abort in PyTorch's C++ teardown ("terminate
        # called without an active exception", 2 of about 16 CI runs).
        dist.barrier()
        del ddp, optimizer  # the reducer's hold on the group goes before the group does
    finally:
        dist.destroy_process_group()


def free_port():
    """A TCP port free on this machine now, for the spawned processes to meet on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = arguments(__doc__)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu trains over gloo, cuda over NCCL with one GPU per process "
                             "(default: %(default)s)")
    parser.add_argument("--nproc", type=int, default=2,
                        help="processes to spawn when not started by torchrun, which gives "
                             "the count itself (default: %(default)s)")
    args = parser.parse_args()
    if "RANK" in os.environ:  # started by torchrun, which set the group's environment
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    else:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        mp.spawn(run, args=(args.nproc, args), nprocs=args.nproc)


if __name__ == "__main__":
    main()
