"""Training and evaluation runs behind ``fastconv train`` and ``fastconv eval``.

A run directory holds ``checkpoint.npz``: model parameters and buffers under
``model/<name>``, optimiser state under ``optim/<index>/<key>``, and the run itself, ``run``
(the settings, the data's normalisation and the epochs done, as JSON) and ``curves`` (one record
per epoch), NumPy arrays only, loaded with allow_pickle=False. It is the run's one commit point:
written whole to a temporary file, then renamed over the last one, so a kill at any instant
leaves the previous epoch's run or the new one, never a mix. ``run.json``, ``curves.csv`` and,
with matplotlib, ``curves.png`` are views of it for people, rewritten after each commit (and on
resuming).

Every failure about a file is a :class:`RunError`, one line naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import data, models, optim
from . import device as devices
from .nn import functional as F
from .rng import manual_seed
from .tensor import no_grad, tensor

DATASETS = ("fashion-mnist", "mnist")
MODELS = ("lenet5", "resnet8", "resnet14", "resnet20", "resnet32")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine")
CURVES = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
          "images_per_second")


class RunError(Exception):
    """A run cannot go on, in one line naming the file and what is wrong with it."""


class Stopped(RunError):
    """Training stopped early (a non-finite loss, an interrupt); the last checkpoint is kept."""


@dataclass
class RunConfig:
    """Everything that defines a run; stored as run.json. The defaults are LeNet-5's recipe;
    :func:`recipe` gives each model's."""
    model: str = "lenet5"
    dataset: str = "fashion-mnist"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "none"  # "cosine": annealed to 0 over the run, per step
    augment: bool = False  # random 2-pixel shifts and horizontal flips
    device: str = "cpu"
    seed: int = 0
    activation: str = "relu"
    pool: str = "max"
    limit: int | None = None  # train on the first `limit` images only (smoke runs, tests)
    normalization: list = field(default_factory=list)  # the train set's (mean, std)
    epochs_done: int = 0


def recipe(model: str) -> dict:
    """The settings a model trains with unless told otherwise: LeNet-5 Adam at 1e-3; a ResNet
    He et al.'s CIFAR recipe, SGD (momentum 0.9) at 0.1 with weight decay 5e-4, the rate
    annealed to 0 on a cosine, but without the shifts and flips (``augment``): over the few
    epochs these CPUs allow they cost accuracy (ResNet-8, 5 epochs of Fashion-MNIST in
    PyTorch: 0.9094 with them, 0.9198 without; benchmarks/results/train.md)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if model == "lenet5":
        return dict(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="none", augment=False)
    return dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="cosine", augment=False)


def load_dataset(name, root=None):
    """(train images, train labels, test images, test labels) of a dataset name."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    load = data.load_fashion_mnist if name == "fashion-mnist" else data.load_mnist
    return (*load("train", root=root), *load("test", root=root))


def build(config: RunConfig):
    """The model and optimiser a config describes, initialised from its seed."""
    recipe(config.model)  # checks the name
    if config.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {config.schedule!r}")
    device = devices.parse(config.device)
    manual_seed(config.seed)
    if config.model == "lenet5":
        model = models.LeNet5(activation=config.activation, pool=config.pool)
    else:
        model = models.ResNet(int(config.model[len("resnet"):]))
    model.to(device)
    if config.optimizer == "adam":
        optimizer = optim.Adam(model.parameters(), lr=config.lr,
                               weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        optimizer = optim.SGD(model.parameters(), lr=config.lr, momentum=0.9,
                              weight_decay=config.weight_decay)
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


class _Lines:
    """Progress for a log file or a pipe: a line every ``every`` seconds and a last one, where a
    bar's carriage-return refreshes would add a line per refresh (thousands an epoch)."""

    def __init__(self, iterable, desc, every=10.0, file=None):
        self.iterable, self.desc, self.every = iterable, desc, every
        self.file, self.postfix = file or sys.stderr, ""

    def __iter__(self):
        total, last = len(self.iterable), time.perf_counter()
        for i, item in enumerate(self.iterable, 1):
            yield item
            now = time.perf_counter()
            if now - last >= self.every or i == total:
                print(f"{self.desc}: {i}/{total} {self.postfix}", file=self.file, flush=True)
                last = now

    def set_postfix(self, **values):
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self):
        pass


def _progress(batches, description):
    """A tqdm bar on a terminal, else :class:`_Lines` (both on stderr)."""
    if sys.stderr.isatty():
        return tqdm(batches, desc=description, unit="batch", leave=True)
    return _Lines(batches, description)


def train_epoch(model, optimizer, batches, description, schedule=None):
    """One pass over ``batches``, stepping ``schedule`` (if any) after each optimiser step;
    returns mean loss, accuracy and images per second."""
    model.train()
    total, correct, count = 0.0, 0, 0
    start = time.perf_counter()
    bar = _progress(batches, description)
    for step, (x, y) in enumerate(bar, 1):
        logits = model(tensor(x, device=_device(model)))
        loss = F.cross_entropy(logits, y)
        if not math.isfinite(loss.item()):
            bar.close()
            raise Stopped(f"the loss is {loss.item()} at {description}, step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        total += loss.item() * len(y)
        correct += int((logits.numpy().argmax(axis=1) == y).sum())
        count += len(y)
        rate = count / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{total / count:.4f}", acc=f"{correct / count:.4f}",
                        img_s=f"{rate:.0f}")
    return total / count, correct / count, count / (time.perf_counter() - start)


# What each optimiser keeps per parameter: the key and its shape ("param": the parameter's).
OPTIMIZER_STATE = {"adam": {"step": (), "m": "param", "v": "param"}, "sgd": {"buffer": "param"}}


@contextlib.contextmanager
def _replacing(path: Path, suffix: str):
    """A temporary file beside ``path`` to write, renamed over ``path`` when the block ends, and
    removed if it fails; OSErrors become a RunError naming ``path``."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=suffix)
    os.close(fd)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(err, OSError):
            raise RunError(f"{path}: cannot write it ({err.strerror or err})") from err
        raise


def save_checkpoint(directory: Path, model, optimizer, config: RunConfig, history):
    """Commit the run: the checkpoint with the settings and the curves inside, in one rename."""
    arrays = {f"model/{name}": value for name, value in model.state_dict().items()}
    for i, state in enumerate(optimizer.state):
        arrays.update({f"optim/{i}/{key}": np.asarray(devices.to_device(value, "cpu"))
                       for key, value in state.items()})
    arrays["optim/steps"] = np.array(optimizer.steps)  # where a schedule resumes
    arrays["run"] = np.array(json.dumps(asdict(config)))
    arrays["curves"] = np.array(json.dumps(history))
    with _replacing(directory / "checkpoint.npz", ".npz") as temporary:
        np.savez(temporary, **arrays)


def write_views(directory: Path, config: RunConfig, history):
    """run.json, curves.csv and (with matplotlib) curves.png from the committed run."""
    with _replacing(directory / "run.json", ".json") as temporary:
        temporary.write_text(json.dumps(asdict(config), indent=1))
    with _replacing(directory / "curves.csv", ".csv") as temporary, \
            open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, CURVES)
        writer.writeheader()
        writer.writerows(history)
    return _plot_curves(directory, history)


def _read(path: Path):
    """(run settings, curves, {key: array}) of a checkpoint, or a RunError saying why not. A
    checkpoint written before the run lived inside it takes its settings from run.json."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError as err:
        raise RunError(f"{path}: no such checkpoint") from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise RunError(f"{path}: not a readable checkpoint ({err})") from err
    try:
        settings = (json.loads(str(arrays.pop("run"))) if "run" in arrays
                    else json.loads((path.parent / "run.json").read_text()))
        config = RunConfig(**settings)
    except (OSError, ValueError, TypeError) as err:
        raise RunError(f"{path}: its run settings are unreadable ({err})") from err
    try:
        history = (json.loads(str(arrays.pop("curves"))) if "curves" in arrays
                   else _read_curves_csv(path.parent / "curves.csv"))
    except (OSError, ValueError, KeyError) as err:
        raise RunError(f"{path}: its curves are unreadable ({err})") from err
    return config, history, arrays


def _read_curves_csv(path: Path):
    """The curves of a checkpoint written before they lived inside it."""
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def _check_keys(path, arrays, model, optimizer, config):
    """Every array of the checkpoint is one the model and optimiser have, of the right shape,
    and every parameter is there, before anything is loaded."""
    params, count = model.state_dict(), len(model.parameters())  # state_dict has buffers too
    state = OPTIMIZER_STATE[config.optimizer]
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        if kind == "model" and rest in params:
            want = params[rest].shape
        elif key == "optim/steps":
            want = ()
        elif kind == "optim" and rest.count("/") == 1:
            index, name = rest.split("/")
            if not (index.isdigit() and int(index) < count and name in state):
                raise RunError(f"{path}: {key} is no state of this run's {config.optimizer} "
                               f"optimiser over {count} parameters")
            want = state[name] if state[name] != "param" else (
                optimizer.params[int(index)].shape)
        else:
            raise RunError(f"{path}: {key} belongs to no part of this run's model or optimiser")
        if value.shape != tuple(want):
            raise RunError(f"{path}: {key} has shape {value.shape}, the run needs {tuple(want)}")
    missing = [name for name in params if f"model/{name}" not in arrays]
    if missing:
        raise RunError(f"{path}: no model/{missing[0]} ({len(missing)} parameters or buffers "
                       "missing)")


def load_checkpoint(path):
    """(config, model, optimizer, history) restored from a checkpoint.npz (or its directory);
    a RunError names the file and what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    config, history, arrays = _read(path)
    try:
        model, optimizer = build(config)
    except ValueError as err:
        raise RunError(f"{path}: {err}") from err
    _check_keys(path, arrays, model, optimizer, config)
    model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                           if k.startswith("model/")})
    optimizer.steps = int(arrays.get("optim/steps", 0))
    for key, value in arrays.items():
        if key.startswith("optim/") and key != "optim/steps":
            _, index, name = key.split("/")
            optimizer.state[int(index)][name] = (
                value.item() if value.ndim == 0 else devices.to_device(value, _device(model)))
    return config, model, optimizer, history


def _plot_curves(directory: Path, history):
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
    with _replacing(directory / "curves.png", ".png") as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return directory / "curves.png"


def _writable(out: Path):
    """Create ``out`` and prove it writable before the first epoch, or a RunError."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: is a file, not a run directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunError(f"{out}: cannot write the run there ({err.strerror or err})") from err


# Settings a resumed run keeps: asking for another value is an error naming the saved one.
KEPT_ON_RESUME = ("model", "dataset", "batch_size", "optimizer", "lr", "weight_decay",
                  "schedule", "augment", "seed", "activation", "pool", "limit")


def fit(config: RunConfig, out: Path, root=None, resume=None, log=print, asked=()):
    """Train ``config.epochs`` epochs (more after ``resume``), evaluating and committing the run
    after each; returns the per-epoch history. ``asked`` names the settings the user gave:
    on resuming, each must equal the saved run's. A RunError (Stopped for a non-finite loss or
    an interrupt) says what stopped the run; the last committed epoch is kept."""
    out = Path(out)
    if resume is not None:
        epochs = config.epochs
        saved, model, optimizer, history = load_checkpoint(resume)
        for name in asked:
            if name in KEPT_ON_RESUME and getattr(config, name) != getattr(saved, name):
                raise RunError(f"--{name.replace('_', '-')} {getattr(config, name)} differs from "
                               f"the resumed run's {getattr(saved, name)}: a resumed run keeps "
                               "its settings")
        config, config.epochs = saved, epochs
        if config.epochs <= config.epochs_done:
            log(f"nothing to do: the run has done {config.epochs_done} epochs, --epochs is "
                f"{config.epochs}")
            return history
    else:
        model, optimizer = build(config)
        history = []
    _writable(out)
    train_x, train_y, test_x, test_y = load_dataset(config.dataset, root)
    if config.limit:
        train_x, train_y = train_x[: config.limit], train_y[: config.limit]
    stats = tuple(config.normalization) or data.pixel_stats(train_x)
    config.normalization = list(stats)
    train = data.Batches(train_x, train_y, config.batch_size, seed=config.seed, normalize=stats,
                         augment=config.augment)
    test = data.Batches(test_x, test_y, 1000, shuffle=False, normalize=stats)
    plot = write_views(out, config, history) if resume is not None else None
    schedule = (optim.CosineAnnealing(optimizer, config.epochs * len(train), base_lr=config.lr)
                if config.schedule == "cosine" else None)
    committed = config.epochs_done
    for epoch in range(config.epochs_done, config.epochs):
        train.epoch = epoch
        try:
            start = time.perf_counter()
            loss, accuracy, rate = train_epoch(model, optimizer, train,
                                               f"epoch {epoch + 1}/{config.epochs}", schedule)
            seconds = time.perf_counter() - start
            test_loss, test_accuracy, _ = evaluate(model, test)
            history.append(dict(epoch=epoch + 1, train_loss=loss, train_accuracy=accuracy,
                                test_loss=test_loss, test_accuracy=test_accuracy,
                                seconds=seconds, images_per_second=rate))
            config.epochs_done = epoch + 1
            save_checkpoint(out, model, optimizer, config, history)
            committed = epoch + 1
            plot = write_views(out, config, history)
        except (RunError, KeyboardInterrupt) as err:
            why = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
            kept = (f"the last checkpoint is epoch {committed} ({out / 'checkpoint.npz'})"
                    if committed else "no epoch was checkpointed")
            stop = RunError if type(err) is RunError else Stopped
            raise stop(f"{why}; {kept}") from err
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
