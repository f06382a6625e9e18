"""Training and evaluation runs behind ``fastconv train`` and ``fastconv eval``.

A run directory holds ``run.json`` (the settings, the data's normalisation and the epochs done),
``checkpoint.npz`` (model parameters under ``model/<name>``, optimiser state under
``optim/<index>/<key>``; NumPy arrays only, loaded with allow_pickle=False), ``curves.csv``
(one row per epoch) and, with matplotlib, ``curves.png``.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import data, models, optim
from . import device as devices
from .nn import functional as F
from .nn import manual_seed
from .tensor import no_grad, tensor

DATASETS = ("fashion-mnist", "mnist")
OPTIMIZERS = ("adam", "sgd")
CURVES = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
          "images_per_second")


@dataclass
class RunConfig:
    """Everything that defines a run; stored as run.json."""
    model: str = "lenet5"
    dataset: str = "fashion-mnist"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    device: str = "cpu"
    seed: int = 0
    activation: str = "relu"
    pool: str = "max"
    limit: int | None = None  # train on the first `limit` images only (smoke runs, tests)
    normalization: list = field(default_factory=list)  # the train set's (mean, std)
    epochs_done: int = 0


def load_dataset(name, root=None):
    """(train images, train labels, test images, test labels) of a dataset name."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    load = data.load_fashion_mnist if name == "fashion-mnist" else data.load_mnist
    return (*load("train", root=root), *load("test", root=root))


def build(config: RunConfig):
    """The model and optimiser a config describes, initialised from its seed."""
    if config.model != "lenet5":
        raise ValueError(f"model must be 'lenet5', got {config.model!r}")
    device = devices.parse(config.device)
    manual_seed(config.seed)
    model = models.LeNet5(activation=config.activation, pool=config.pool).to(device)
    if config.optimizer == "adam":
        optimizer = optim.Adam(model.parameters(), lr=config.lr)
    elif config.optimizer == "sgd":
        optimizer = optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    return model, optimizer


def _device(model):
    return model.parameters()[0].device


def evaluate(model, batches):
    """Mean loss, accuracy and the predicted classes over ``batches``, without a graph."""
    model.eval()
    total, correct, count, predictions = 0.0, 0, 0, []
    with no_grad():
        for x, y in batches:
            logits = model(tensor(x, device=_device(model)))
            total += F.cross_entropy(logits, y).item() * len(y)
            predicted = logits.numpy().argmax(axis=1)
            correct += int((predicted == y).sum())
            count += len(y)
            predictions.append(predicted)
    return total / count, correct / count, np.concatenate(predictions)


def train_epoch(model, optimizer, batches, description):
    """One pass over ``batches``; returns mean loss, accuracy and images per second."""
    model.train()
    total, correct, count = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(batches, desc=description, unit="batch", leave=True)
    for x, y in bar:
        logits = model(tensor(x, device=_device(model)))
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        correct += int((logits.numpy().argmax(axis=1) == y).sum())
        count += len(y)
        rate = count / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{total / count:.4f}", acc=f"{correct / count:.4f}",
                        img_s=f"{rate:.0f}")
    return total / count, correct / count, count / (time.perf_counter() - start)


def save_checkpoint(directory: Path, model, optimizer, config: RunConfig):
    arrays = {f"model/{name}": value for name, value in model.state_dict().items()}
    for i, state in enumerate(optimizer.state):
        arrays.update({f"optim/{i}/{key}": np.asarray(devices.to_device(value, "cpu"))
                       for key, value in state.items()})
    temporary = directory / "checkpoint.tmp.npz"
    np.savez(temporary, **arrays)
    temporary.replace(directory / "checkpoint.npz")
    (directory / "run.json").write_text(json.dumps(asdict(config), indent=1))


def load_checkpoint(path):
    """(config, model, optimizer) restored from a checkpoint.npz and the run.json beside it."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    config = RunConfig(**json.loads((path.parent / "run.json").read_text()))
    model, optimizer = build(config)
    with np.load(path, allow_pickle=False) as arrays:
        model.load_state_dict({k[len("model/"):]: arrays[k] for k in arrays.files
                               if k.startswith("model/")})
        for key in arrays.files:
            if key.startswith("optim/"):
                _, index, name = key.split("/")
                value = arrays[key]
                optimizer.state[int(index)][name] = (
                    value.item() if value.ndim == 0 else devices.to_device(value, _device(model)))
    return config, model, optimizer


def _write_curves(directory: Path, history):
    with open(directory / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CURVES)
        writer.writeheader()
        writer.writerows(history)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in ("train", "test"):
        left.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
        right.plot(epochs, [row[f"{split}_accuracy"] for row in history], marker="o",
                   label=split)
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    right.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axes in (left, right):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(directory / "curves.png", dpi=100)
    plt.close(figure)
    return directory / "curves.png"


def _read_curves(directory: Path):
    path = directory / "curves.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def fit(config: RunConfig, out: Path, root=None, resume=None, log=print):
    """Train ``config.epochs`` epochs (more after ``resume``), evaluating and checkpointing
    after each; returns the per-epoch history."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if resume is not None:
        epochs = config.epochs
        config, model, optimizer = load_checkpoint(resume)
        config.epochs = epochs
        history = _read_curves(Path(resume).parent if Path(resume).is_file() else Path(resume))
    else:
        model, optimizer = build(config)
        history = []
    train_x, train_y, test_x, test_y = load_dataset(config.dataset, root)
    if config.limit:
        train_x, train_y = train_x[: config.limit], train_y[: config.limit]
    stats = tuple(config.normalization) or data.pixel_stats(train_x)
    config.normalization = list(stats)
    train = data.Batches(train_x, train_y, config.batch_size, seed=config.seed, normalize=stats)
    test = data.Batches(test_x, test_y, 1000, shuffle=False, normalize=stats)
    plot = None
    for epoch in range(config.epochs_done, config.epochs):
        train.epoch = epoch
        start = time.perf_counter()
        loss, accuracy, rate = train_epoch(model, optimizer, train,
                                           f"epoch {epoch + 1}/{config.epochs}")
        seconds = time.perf_counter() - start
        test_loss, test_accuracy, _ = evaluate(model, test)
        history.append(dict(epoch=epoch + 1, train_loss=loss, train_accuracy=accuracy,
                            test_loss=test_loss, test_accuracy=test_accuracy, seconds=seconds,
                            images_per_second=rate))
        config.epochs_done = epoch + 1
        save_checkpoint(out, model, optimizer, config)
        plot = _write_curves(out, history)
        log(f"epoch {epoch + 1}: train loss {loss:.4f} acc {accuracy:.4f} | test loss "
            f"{test_loss:.4f} acc {test_accuracy:.4f} | {seconds:.1f} s, {rate:.0f} images/s")
    log(f"wrote {out / 'checkpoint.npz'}, {out / 'run.json'}, {out / 'curves.csv'}"
        + (f", {plot}" if plot else ""))
    return history


def confusion_matrix(labels, predictions, classes=10):
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts
