"""The checked examples in the core's docstrings."""

import doctest

import pytest

import workbench.compare
import workbench.evaluate
import workbench.losses


@pytest.mark.parametrize("module", [workbench.losses, workbench.evaluate, workbench.compare])
def test_docstring_examples_pass(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if module is not workbench.compare:
        assert result.attempted > 0
