"""What a ResNet run needs besides the network: the cosine schedule (PyTorch's, continued on
resume), seeded augmentation, per-model recipes, and progress that stays a few lines in a log
file; and a short `fastconv train --model resnet8` run end to end."""

import json

import numpy as np
import pytest
import torch

from fastconv import cli, data, models, optim, tensor, train


def test_cosine_schedule_is_pytorchs_and_continues_from_the_optimisers_steps():
    ours = optim.SGD(models.ResNet(8, width=2).parameters(), lr=0.1, momentum=0.9)
    param = torch.nn.Parameter(torch.zeros(1))
    theirs = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    schedule = optim.CosineAnnealing(ours, total_steps=10)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=10)
    for _ in range(10):
        assert ours.lr == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        ours.steps += 1  # what ours.step() counts
        schedule.step()
        theirs.step(), reference.step()
    assert ours.lr == pytest.approx(0, abs=1e-15)
    resumed = optim.SGD(models.ResNet(8, width=2).parameters(), lr=0.1)
    resumed.steps = 4
    optim.CosineAnnealing(resumed, total_steps=10)
    assert resumed.lr == pytest.approx(0.1 * (1 + np.cos(np.pi * 0.4)) / 2)


def test_augmentation_shifts_and_flips_each_image_and_replays_an_epoch():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (40, 28, 28), dtype=np.uint8)  # no black pixel
    batches = data.Batches(images, np.arange(40), 8, seed=3, normalize=False, augment=True)
    first = [x for x, _ in batches]
    batches.epoch = 0
    assert all(np.array_equal(a, b) for a, b in zip(first, [x for x, _ in batches],
                                                     strict=True))
    second = [x for x, _ in batches]
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    batches.epoch = 0
    places, flips = set(), 0
    for x, labels in batches:
        for canvas, label in zip(x[:, 0], labels, strict=True):
            rows, cols = np.nonzero(canvas)
            top, left = rows.min(), cols.min()
            crop = canvas[top:top + 28, left:left + 28] * 255
            image = images[label].astype(np.float32)
            flipped = np.allclose(crop, image[:, ::-1], atol=1e-3)
            assert flipped or np.allclose(crop, image, atol=1e-3)
            places.add((top, left))
            flips += flipped
    assert places <= {(t, c) for t in range(5) for c in range(5)} and len(places) > 5
    assert 5 < flips < 35


def test_recipes_differ_by_model_and_the_options_override_them():
    assert train.recipe("resnet8") == dict(optimizer="sgd", lr=0.1, weight_decay=5e-4,
                                           schedule="cosine", augment=False)
    assert train.recipe("lenet5")["optimizer"] == "adam"
    with pytest.raises(ValueError, match="model must be one of"):
        train.recipe("resnet9")
    model, optimizer = train.build(train.RunConfig(model="resnet14", **train.recipe("resnet14")))
    assert isinstance(model, models.ResNet) and len(model.layer1) == 2
    assert optimizer.weight_decay == 5e-4 and optimizer.momentum == 0.9


def test_progress_in_a_log_file_is_a_few_lines(capsys):
    """A pipe or a file gets a line every 10 seconds and a last one, not a bar's refreshes."""
    model, optimizer = train.build(train.RunConfig(model="resnet8"))
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((2, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 2))
               for _ in range(5)]
    train.train_epoch(model, optimizer, batches, "epoch 1/1")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [lines[0]] and lines[0].startswith("epoch 1/1: 5/5 loss=")
    assert "\r" not in lines[0] and optimizer.steps == 5


@pytest.mark.slow
def test_a_resnet_trains_from_the_command_line_and_resumes_its_schedule(data_root, tmp_path,
                                                                        capsys):
    out = tmp_path / "resnet8"
    args = ["train", "--model", "resnet8", "--limit", "256", "--batch-size", "64", "--augment",
            "--data-root", data_root, "--out", str(out)]
    assert cli.main([*args, "--epochs", "1"]) == 0
    with np.load(out / "checkpoint.npz") as arrays:
        assert int(arrays["optim/steps"]) == 4 and "model/layer3.0.downsample.1.running_var" in (
            arrays.files)
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--data-root",
                     data_root]) == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["epochs_done"] == 2 and settings["schedule"] == "cosine"
    assert settings["augment"] and settings["optimizer"] == "sgd"
    _, model, optimizer, _ = train.load_checkpoint(out)
    assert optimizer.steps == 8  # 4 steps an epoch: where the cosine resumes
    assert model(tensor(np.zeros((1, 1, 32, 32), np.float32))).shape == (1, 10)
    assert (out / "curves.png").stat().st_size > 0
    assert "epoch 2/2: 4/4" in capsys.readouterr().err
