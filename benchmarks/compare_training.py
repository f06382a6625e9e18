"""Train a network with fastconv and with PyTorch side by side: same data pipeline, batches
(augmentation included), initial weights, recipe (optimiser, schedule) and threads; prints
per-epoch time and test accuracy of each.

    python benchmarks/compare_training.py --dataset fashion-mnist --epochs 1 --threads 2
    python benchmarks/compare_training.py --model resnet8 --epochs 5 --framework torch
    python benchmarks/compare_training.py --device cuda --framework fastconv   # on a GPU

LeNet-5 trains with Adam at 1e-3; a ResNet with `fastconv train`'s recipe for it (SGD with
momentum 0.9 at 0.1, weight decay 5e-4, cosine annealing per step); --lr and --augment
override the recipe's.

The fastconv numbers of a full run come from `fastconv train`; this script exists to put an
epoch of each framework next to each other on the same machine, in the same minutes. Whichever
of the two is imported first sets up OpenMP in a process: torch first keeps its own runtime
(its best) and pushes fastconv's kernels onto Numba's workqueue threads; fastconv first starts
the runtime both then share, with its own spin count (benchmarks/results/train.md).
`--framework` runs one of them alone, imported first, for each one's own best time: run the
script once for each.
"""

import argparse
import sys
import time
import warnings

_only = argparse.ArgumentParser(add_help=False)
_only.add_argument("--framework", default="both")
if _only.parse_known_args(sys.argv[1:])[0].framework == "fastconv":
    import fastconv  # noqa: F401  (first, to set up OpenMP; see above)

import torch  # noqa: E402

# in "both" and "torch" runs torch comes first, keeping its own wait policy; fastconv's warning
# about that order is for code that mixes the two in one model
warnings.filterwarnings("ignore", "fastconv was imported after", RuntimeWarning)
import fastconv  # noqa: E402
from fastconv import data, models, optim, tensor, train  # noqa: E402
from fastconv.nn import functional as F  # noqa: E402
from torch_lenet5 import TorchLeNet5  # noqa: E402  (benchmarks/, the tests' twin too)
from torch_resnet import TorchResNet  # noqa: E402


def networks(name):
    """(fastconv's, PyTorch's) network ``name``, PyTorch's initialisation in both."""
    torch.manual_seed(0)
    if name == "lenet5":
        ours, theirs = models.LeNet5(), TorchLeNet5()
    else:
        depth = int(name[len("resnet"):])
        ours, theirs = models.ResNet(depth), TorchResNet(depth)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def optimisers(recipe, ours, theirs, total_steps):
    """Each side's optimiser and per-step schedule (or None) for ``recipe``
    (fastconv.train.recipe's settings)."""
    settings = dict(lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    if recipe["optimizer"] == "adam":
        opt_ours = optim.Adam(ours.parameters(), **settings)
        opt_theirs = torch.optim.Adam(theirs.parameters(), **settings)
    else:
        opt_ours = optim.SGD(ours.parameters(), momentum=0.9, **settings)
        opt_theirs = torch.optim.SGD(theirs.parameters(), momentum=0.9, **settings)
    if recipe["schedule"] == "none":
        return opt_ours, None, opt_theirs, None
    return (opt_ours, optim.CosineAnnealing(opt_ours, total_steps), opt_theirs,
            torch.optim.lr_scheduler.CosineAnnealingLR(opt_theirs, total_steps))


def epoch_fastconv(model, opt, schedule, batches, device):
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(model(tensor(x, device=device)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
    loss.item()  # waits for the GPU's queue
    return time.perf_counter() - start


def epoch_torch(model, opt, schedule, batches, device):
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
    loss.item()
    return time.perf_counter() - start


def accuracy_torch(model, batches, device):
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(torch.from_numpy(x).to(device)).argmax(1).cpu().numpy() == y)
                       .sum()) for x, y in batches)
    return hits / len(batches.images)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=train.MODELS, default="lenet5",
                        help="the network, trained with its recipe (default: lenet5)")
    parser.add_argument("--lr", type=float, help="the recipe's learning rate, overridden")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction,
                        help="the recipe's augmentation, overridden")
    parser.add_argument("--dataset", choices=train.DATASETS, default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=fastconv.get_num_threads())
    parser.add_argument("--framework", choices=("both", "fastconv", "torch"), default="both")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where both train: cuda needs fastconv's cuda extra and a CUDA "
                             "build of torch (default: cpu)")
    parser.add_argument("--limit", type=int, default=None,
                        help="train and test on the first N images of each set (a smoke run)")
    parser.add_argument("--data", default=None,
                        help="dataset root (default: FASTCONV_DATA and fastconv's search path)")
    args = parser.parse_args()
    fastconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    train_x, train_y, test_x, test_y = (a[:args.limit]
                                        for a in train.load_dataset(args.dataset, args.data))
    stats = data.pixel_stats(train_x)
    recipe = train.recipe(args.model)
    recipe.update({k: v for k, v in (("lr", args.lr), ("augment", args.augment)) if v is not None})
    batches = data.Batches(train_x, train_y, args.batch_size, normalize=stats,
                           augment=recipe["augment"])
    test = data.Batches(test_x, test_y, 1000, shuffle=False, normalize=stats)

    ours, theirs = networks(args.model)
    runs = {name: args.framework in ("both", name) for name in ("fastconv", "torch")}
    ours.to(args.device)
    if runs["torch"]:  # a CPU build of torch (CI's) runs fastconv alone on a GPU or simulator
        theirs.to(args.device)
    opt_ours, schedule_ours, opt_theirs, schedule_theirs = optimisers(
        recipe, ours, theirs, args.epochs * len(batches))
    warm = data.Batches(train_x[:256], train_y[:256], args.batch_size, normalize=stats)
    # JIT compilation, CUDA contexts and cuDNN's handles stay out of the timed epochs
    spare, spare_torch = networks(args.model)
    opt_spare, schedule_spare, opt_spare_torch, schedule_spare_torch = optimisers(
        recipe, spare, spare_torch, len(warm))
    if runs["fastconv"]:
        epoch_fastconv(spare.to(args.device), opt_spare, schedule_spare, warm, args.device)
    if runs["torch"]:
        epoch_torch(spare_torch.to(args.device), opt_spare_torch, schedule_spare_torch, warm,
                    args.device)

    print(f"{args.model}, {args.dataset}, batch {args.batch_size}, {args.device}, "
          f"{args.threads} threads, {len(batches)} steps an epoch, recipe {recipe}")
    for epoch in range(args.epochs):
        report = []
        if runs["fastconv"]:
            batches.epoch = epoch
            seconds = epoch_fastconv(ours, opt_ours, schedule_ours, batches, args.device)
            report.append(f"fastconv {seconds:.1f} s ({len(train_x) / seconds:.0f} img/s, "
                          f"test acc {train.evaluate(ours, test)[1]:.4f})")
        if runs["torch"]:
            batches.epoch = epoch
            seconds = epoch_torch(theirs, opt_theirs, schedule_theirs, batches, args.device)
            report.append(f"torch {seconds:.1f} s ({len(train_x) / seconds:.0f} img/s, "
                          f"test acc {accuracy_torch(theirs, test, args.device):.4f})")
        print(f"epoch {epoch + 1}: " + " | ".join(report))


if __name__ == "__main__":
    main()
