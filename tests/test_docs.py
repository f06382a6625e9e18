"""The examples in the public docstrings run and print what they say."""

import doctest
import re
from pathlib import Path

import pytest
from test_gpu import gpu_missing

import fastconv.ops
import fastconv.tf


@pytest.mark.parametrize("module", [fastconv.ops, fastconv.tf], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0


README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("index", range(len(re.findall(r"```python\n", README.read_text()))))
def test_readme_python_examples_run(index):
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[index]
    if "import cupy" in block and gpu_missing():
        pytest.skip(f"README python block {index} runs on a GPU: {gpu_missing()}")
    exec(compile(block, f"README.md python block {index}", "exec"), {})
