"""`fastconv train` and `fastconv eval` on a slice of Fashion-MNIST: the network learns, the
run directory holds what it promises, checkpoints round-trip and a run resumes."""

import csv
import json

import numpy as np
import pytest

from fastconv import cli, train

pytestmark = pytest.mark.slow  # trains for two epochs


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory):
    """Two epochs on 3,000 training images, evaluated on the whole test set."""
    out = tmp_path_factory.mktemp("run")
    status = cli.main(["train", "--epochs", "2", "--limit", "3000", "--batch-size", "32",
                       "--out", str(out), "--data-root", data_root, "--seed", "1"])
    assert status == 0
    return out


def _curves(out):
    with open(out / "curves.csv") as f:
        return list(csv.DictReader(f))


def test_training_learns(run):
    rows = _curves(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"]) < 2.3
    assert float(rows[1]["test_accuracy"]) > 0.65  # chance is 0.10


def test_run_directory_holds_settings_checkpoint_and_curves(run):
    settings = json.loads((run / "run.json").read_text())
    assert settings["epochs_done"] == 2 and settings["dataset"] == "fashion-mnist"
    assert settings["normalization"][0] == pytest.approx(0.286, abs=0.01)
    with np.load(run / "checkpoint.npz", allow_pickle=False) as arrays:
        assert "model/c1.weight" in arrays.files and "optim/0/m" in arrays.files
        assert json.loads(str(arrays["run"])) == settings  # run.json is a view of it
    assert (run / "curves.png").stat().st_size > 0


def test_checkpoint_round_trip_gives_the_same_predictions(run, data_root):
    config, model, optimizer, history = train.load_checkpoint(run / "checkpoint.npz")
    assert [row["epoch"] for row in history] == [1, 2]
    _, _, images, labels = train.load_dataset("fashion-mnist", data_root)
    batches = train.data.Batches(images[:500], labels[:500], 250, shuffle=False,
                                 normalize=tuple(config.normalization))
    first = train.evaluate(model, batches)
    _, again, _, _ = train.load_checkpoint(run)
    second = train.evaluate(again, batches)
    np.testing.assert_array_equal(first[2], second[2])
    assert optimizer.state[0]["step"] == 2 * -(-3000 // 32)  # 94 steps an epoch, last partial


def test_resume_continues_where_the_run_stopped(run, data_root, tmp_path):
    copy = tmp_path / "resumed"
    copy.mkdir()
    for name in ("checkpoint.npz", "run.json", "curves.csv"):
        (copy / name).write_bytes((run / name).read_bytes())
    status = cli.main(["train", "--epochs", "3", "--resume", str(copy / "checkpoint.npz"),
                       "--out", str(copy), "--data-root", data_root])
    assert status == 0
    rows = _curves(copy)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert json.loads((copy / "run.json").read_text())["epochs_done"] == 3


def test_eval_prints_accuracy_and_confusion_matrix(run, data_root, capsys):
    assert cli.main(["eval", str(run), "--data-root", data_root]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy == pytest.approx(float(_curves(run)[-1]["test_accuracy"]), abs=1e-9)
    matrix = [line.split()[1:] for line in out.splitlines()[3:13]]
    assert sum(int(v) for row in matrix for v in row) == 10000


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--epochs", "0"])
    assert "--epochs must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--device", "cuda", "--epochs", "1", "--data-root", "/nonexistent"])
    assert "cuda" in capsys.readouterr().err
