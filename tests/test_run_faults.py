"""`fastconv train` and `fastconv eval` under faults, on a tiny stand-in dataset (256 training
images): each fault ends with the previous epoch's run or the new one intact, and one line on
stderr naming the file and what is wrong, never a traceback.

The cases and what each gets are tabled in the README ("When a run fails").

These machines run as root, where chmod does not make a folder read-only: the OSErrors are
injected.
"""

import errno
import os

import numpy as np
import pytest

from fastconv import cli, train

pytestmark = pytest.mark.slow  # each case trains a little


@pytest.fixture(autouse=True)
def tiny_dataset(monkeypatch):
    rng = np.random.default_rng(0)

    def load(name, root=None):
        images = rng.integers(0, 256, (356, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, 356)
        return images[:256], labels[:256], images[256:], labels[256:]
    monkeypatch.setattr(train, "load_dataset", load)


def _train(out, *extra, epochs=2):
    return cli.main(["train", "--epochs", str(epochs), "--batch-size", "64", "--out", str(out),
                     *extra])


def _stderr_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    assert "Traceback" not in "\n".join(err)
    return err[-1]  # the bars of tqdm come before it


def _epochs(out):
    return train.load_checkpoint(out)[0].epochs_done


def _files(out):
    return sorted(os.listdir(out))


RUN_FILES = ["checkpoint.npz", "curves.csv", "curves.png", "run.json"]


def _fail_at(monkeypatch, target, name, epoch, error):
    """Make ``target.name`` raise ``error`` when called during epoch ``epoch`` (1-based)."""
    real, calls = getattr(target, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise error
        return real(*args, **kwargs)
    monkeypatch.setattr(target, name, failing)
    return real


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   OSError(errno.EROFS, "Read-only file system")],
                         ids=["ENOSPC", "EROFS"])
def test_a_failed_checkpoint_write_keeps_the_last_one(tmp_path, monkeypatch, capsys, error):
    real = _fail_at(monkeypatch, np, "savez", 2, error)
    assert _train(tmp_path, epochs=3) == 2
    line = _stderr_line(capsys)
    assert str(tmp_path / "checkpoint.npz") in line and error.strerror in line
    assert line.endswith(f"the last checkpoint is epoch 1 ({tmp_path / 'checkpoint.npz'})")
    assert _files(tmp_path) == RUN_FILES and _epochs(tmp_path) == 1
    monkeypatch.setattr(np, "savez", real)
    assert _train(tmp_path, "--resume", str(tmp_path), epochs=3) == 0
    assert [row["epoch"] for row in train.load_checkpoint(tmp_path)[3]] == [1, 2, 3]


def test_a_kill_before_the_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch, capsys):
    assert _train(tmp_path, epochs=1) == 0
    before = (tmp_path / "checkpoint.npz").read_bytes()
    real = os.replace

    def killed(src, dst):
        if str(dst).endswith("checkpoint.npz"):
            raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(os, "replace", killed)
    assert _train(tmp_path, "--resume", str(tmp_path), epochs=2) == 130
    assert _stderr_line(capsys).endswith(
        f"interrupted; the last checkpoint is epoch 1 ({tmp_path / 'checkpoint.npz'})")
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert _files(tmp_path) == RUN_FILES


@pytest.mark.parametrize("view", ["run.json", "curves.csv"])
def test_a_kill_after_the_commit_leaves_views_resume_rewrites(tmp_path, monkeypatch, capsys,
                                                             view):
    real = train._replacing

    def killed(path, suffix):
        if path.name == view and _epochs(tmp_path) == 2:
            raise KeyboardInterrupt
        return real(path, suffix)
    assert _train(tmp_path, epochs=1) == 0
    monkeypatch.setattr(train, "_replacing", killed)
    assert _train(tmp_path, "--resume", str(tmp_path), epochs=2) == 130
    assert "the last checkpoint is epoch 2" in _stderr_line(capsys)
    monkeypatch.setattr(train, "_replacing", real)
    assert _train(tmp_path, "--resume", str(tmp_path), epochs=3) == 0
    with open(tmp_path / "curves.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["1", "2", "3"]
    assert '"epochs_done": 3' in (tmp_path / "run.json").read_text()


def test_ctrl_c_mid_epoch(tmp_path, monkeypatch, capsys):
    _fail_at(monkeypatch, train, "train_epoch", 2, KeyboardInterrupt())
    assert _train(tmp_path) == 130
    assert _stderr_line(capsys) == (f"fastconv train: interrupted; the last checkpoint is "
                                    f"epoch 1 ({tmp_path / 'checkpoint.npz'})")


def test_a_non_finite_loss_stops_the_run(tmp_path, monkeypatch, capsys):
    real, calls = train.F.cross_entropy, []

    def diverging(logits, labels):
        calls.append(1)
        return real(logits * np.float32(np.nan) if len(calls) == 3 else logits, labels)
    monkeypatch.setattr(train.F, "cross_entropy", diverging)
    assert _train(tmp_path) == 1
    assert _stderr_line(capsys) == ("fastconv train: the loss is nan at epoch 1/2, step 3; no "
                                    "epoch was checkpointed")
    assert not (tmp_path / "checkpoint.npz").exists()


@pytest.mark.parametrize("make", ["file", "read-only"])
def test_the_output_folder_is_checked_before_training(tmp_path, monkeypatch, capsys, make):
    out = tmp_path / "out"
    if make == "file":
        out.write_text("not a folder")
    else:
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(train.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(train, "train_epoch", lambda *a: pytest.fail("an epoch ran"))
    assert _train(out) == 2
    line = _stderr_line(capsys)
    assert str(out) in line and ("is a file" in line or "Read-only file system" in line)


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "run"
    assert _train(out, epochs=1) == 0
    return out


def _rewrite(path, drop=(), **arrays):
    with np.load(path, allow_pickle=False) as npz:
        kept = {k: npz[k] for k in npz.files if k not in drop}
    np.savez(path, **{**kept, **arrays})


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "bit-flipped": lambda p: p.write_bytes(p.read_bytes()[:200] + bytes([p.read_bytes()[200] ^ 1])
                                           + p.read_bytes()[201:]),
    "empty": lambda p: p.write_bytes(b""),
    "not-a-zip": lambda p: p.write_text("hello"),
    "missing": lambda p: p.unlink(),
    "unknown-setting": lambda p: _rewrite(p, run=np.array('{"epochs": 1, "colour": "red"}')),
    "unreadable-settings": lambda p: _rewrite(p, run=np.array("{not json")),
    "optim-index-out-of-range": lambda p: _rewrite(p, **{"optim/99/step": np.array(1)}),
    "optim-index-negative": lambda p: _rewrite(p, **{"optim/-1/m": np.zeros(10, np.float32)}),
    "unknown-key": lambda p: _rewrite(p, **{"extra": np.zeros(3)}),
    "wrong-shape": lambda p: _rewrite(p, **{"model/c1.weight": np.zeros((6, 1, 3, 3))}),
    "missing-parameter": lambda p: _rewrite(p, drop=("model/c1.bias",)),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_damaged_checkpoint_is_one_line_naming_it(run, capsys, damage, command):
    path = run / "checkpoint.npz"
    damage(path)
    if command == "eval":
        assert cli.main(["eval", str(path)]) == 2
    else:
        assert _train(run, "--resume", str(path), epochs=2) == 2
    assert _stderr_line(capsys).startswith(
        f"fastconv {'eval' if command == 'eval' else 'train'}: error: {path}")


def test_resume_keeps_the_saved_settings(run, capsys):
    assert _train(run, "--resume", str(run), "--lr", "0.01", epochs=2) == 2
    assert _stderr_line(capsys) == ("fastconv train: error: --lr 0.01 differs from the resumed "
                                    "run's 0.001: a resumed run keeps its settings")
    assert _train(run, "--resume", str(run), "--lr", "0.001", epochs=2) == 0  # the same: fine


def test_resume_with_nothing_left_to_do_writes_nothing(run, capsys):
    before = {name: (run / name).stat().st_mtime_ns for name in RUN_FILES}
    assert _train(run, "--resume", str(run), epochs=1) == 0
    out = capsys.readouterr().out
    assert "nothing to do: the run has done 1 epochs, --epochs is 1" in out
    assert "wrote" not in out
    assert {name: (run / name).stat().st_mtime_ns for name in RUN_FILES} == before


def test_a_checkpoint_carries_buffers_and_checks_them_before_loading(tmp_path):
    """A model with batch norm: its running statistics and batch count go into the checkpoint
    beside the parameters (NumPy arrays, no pickle), come back, and a missing one is named."""
    from fastconv import nn, optim, tensor

    def model():
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    saved = model()
    saved.train()(tensor(np.random.default_rng(0).standard_normal((2, 1, 5, 5)),
                         dtype=np.float32))
    optimizer = optim.Adam(saved.parameters())
    train.save_checkpoint(tmp_path, saved, optimizer, train.RunConfig(), [])
    _, _, arrays = train._read(tmp_path / "checkpoint.npz")
    assert arrays["model/1.num_batches_tracked"] == 1
    restored = model()
    train._check_keys(tmp_path, arrays, restored, optimizer, train.RunConfig())
    restored.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                              if k.startswith("model/")})
    for name, value in saved.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[name], value)
    del arrays["model/1.running_var"]
    with pytest.raises(train.RunError, match="no model/1.running_var"):
        train._check_keys(tmp_path, arrays, restored, optimizer, train.RunConfig())
