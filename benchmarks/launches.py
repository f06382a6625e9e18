"""Count the GPU launches of one training step on device="cuda", without a GPU.

    python benchmarks/launches.py [--model lenet5] [--batch 64] [--activation relu] [--pool max]

The model trains with its recipe (fastconv.train.recipe: LeNet-5 Adam, a ResNet SGD with
momentum and weight decay) on 32x32 single-channel images.

The step runs under Numba's CUDA simulator. Two kinds of launch are counted, apart:

- fastconv's kernels: every launch of a kernel the registry lists (fastconv.registry.
  cuda_kernels) is counted and skipped (the counts do not depend on the values, and the
  simulator would take minutes to run them);
- array operations: the element-wise work, reductions, gathers, copies and fills that the
  autograd layer, the loss and the ops' glue do on device arrays outside fastconv's kernels,
  each a CuPy launch of its own on a GPU. Under the simulator the device arrays are NumPy
  arrays; here they are a NumPy subclass that counts every ufunc call, reduction, NumPy
  function and copying method applied to it (a view costs nothing and is not counted; a
  NumPy function calling others inside counts once).
"""

import os

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is first imported

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402

from fastconv import Tensor, registry, tensor, train  # noqa: E402
from fastconv import cuda as backend  # noqa: E402
from fastconv.nn import functional as F  # noqa: E402


class Counted:
    """A kernel whose launches are counted instead of run."""

    def __init__(self, name, counts):
        self.name, self.counts = name, counts

    def __getitem__(self, configuration):
        def launch(*args):
            self.counts[self.name] += 1
        return launch


class DeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy array: each operation on it that would be a launch
    on a GPU adds one to ``DeviceArray.counts`` under the operation's name."""

    counts = Counter()
    _depth = 0  # > 0 inside a counted operation, whose inner operations are its own

    @classmethod
    @contextlib.contextmanager
    def operation(cls, name, count=True):
        if count and cls._depth == 0:
            cls.counts[name] += 1
        cls._depth += 1
        try:
            yield
        finally:
            cls._depth -= 1

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = ufunc.__name__ + ("" if method == "__call__" else f".{method}")
        if "out" in kwargs:
            kwargs["out"] = tuple(map(_host, kwargs["out"]))
        with DeviceArray.operation(name):
            return _device(getattr(ufunc, method)(*map(_host, inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        with DeviceArray.operation(func.__name__, count=False):
            result = func._implementation(*args, **kwargs)
        if _new_memory(result, args) and DeviceArray._depth == 0:
            DeviceArray.counts[func.__name__] += 1
        return _device(result)


def _host(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _device(a):
    if isinstance(a, np.generic):  # CuPy reduces to 0-d arrays, not to scalars
        a = np.asarray(a)
    if isinstance(a, tuple):
        return tuple(map(_device, a))
    return a.view(DeviceArray) if type(a) is np.ndarray else a


def _new_memory(result, sources):
    """Whether ``result`` was written (a copy, a gather), not a view of one of ``sources``."""
    if not isinstance(result, np.ndarray):
        return False
    arrays = [s for s in sources if isinstance(s, np.ndarray)]
    return not any(np.may_share_memory(result, s) for s in arrays)


def _copying(name):
    """ndarray's method ``name``, counted when it writes new memory (a reshape that has to
    copy, fancy indexing) or into the array (item assignment, fill)."""
    method = getattr(np.ndarray, name)

    def counted(self, *args, **kwargs):
        with DeviceArray.operation(name, count=False):
            result = method(self, *args, **kwargs)
        if (name in ("__setitem__", "fill") or _new_memory(result, (self,))) and (
                DeviceArray._depth == 0):
            DeviceArray.counts[name] += 1
        return _device(result)
    return counted


for _name in ("copy", "astype", "reshape", "__getitem__", "__setitem__", "fill", "mean"):
    setattr(DeviceArray, _name, _copying(_name))
# Code that picks NumPy or CuPy by an array's module (cuda_device.flat) must find NumPy.
DeviceArray.__module__ = "numpy"


def _filling(name):
    """NumPy's ``name`` (zeros, ones, full) making a DeviceArray, counted."""
    def fill(*args, **kwargs):
        DeviceArray.counts[name] += 1
        return _device(getattr(np, name)(*args, **kwargs))
    return staticmethod(fill)


class DeviceModule:
    """The CUDA backend's array module (NumPy under the simulator) making DeviceArrays, a fill
    counted (CuPy's zeros are a memset, its ones and full a launch)."""

    zeros, ones, full = map(_filling, ("zeros", "ones", "full"))

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(*args, **kwargs):
        return _device(np.empty(*args, **kwargs))


def count_step(batch, activation="relu", pool="max", model="lenet5"):
    """(fastconv kernel launches, array operations) of one training step of ``model`` with its
    recipe on ``batch`` images, each a Counter by name: the second step, as every step after
    the first (which also creates the optimiser's state)."""
    kernels = Counter()
    for name in registry.cuda_kernels():
        module, _, kernel = name.partition(".")
        setattr(sys.modules[f"fastconv.kernels.{module}"], kernel, Counted(kernel, kernels))
    # Every device array becomes a DeviceArray: the tensors' data and whatever the backend
    # allocates (every kernel output among them).
    Tensor.data = property(lambda self: self.__dict__["data"],
                           lambda self, a: self.__dict__.__setitem__("data", _device(a)))
    backend.xp = DeviceModule()
    settings = {**train.recipe(model), "augment": False}
    network, optimizer = train.build(train.RunConfig(model=model, device="cuda", **settings,
                                                     activation=activation, pool=pool))
    x = np.random.default_rng(0).standard_normal((batch, 1, 32, 32)).astype(np.float32)
    x, labels = tensor(x, device="cuda"), np.arange(batch) % 10
    for _ in range(2):
        kernels.clear()
        DeviceArray.counts.clear()
        with np.errstate(all="ignore"):  # the skipped kernels leave their outputs unwritten
            loss = F.cross_entropy(network(x), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return kernels, Counter(DeviceArray.counts)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet5", choices=train.MODELS,
                        help="the network, with its recipe's optimiser (default: lenet5)")
    parser.add_argument("--batch", type=int, default=64, help="images per step (default: 64)")
    parser.add_argument("--activation", default="relu", help="LeNet-5's (default: relu)")
    parser.add_argument("--pool", default="max", help="LeNet-5's, max or avg (default: max)")
    args = parser.parse_args()
    kernels, operations = count_step(args.batch, args.activation, args.pool, args.model)
    for counts, what in ((kernels, "fastconv kernel launches"),
                         (operations, "array operations (a CuPy launch each on a GPU)")):
        for name, n in counts.most_common():
            print(f"{n:4d}  {name}")
        print(f"{sum(counts.values()):4d}  {what} in one training step")


if __name__ == "__main__":
    main()
