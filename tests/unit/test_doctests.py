"""The checked examples in the core's docstrings."""

import doctest

import pytest

import workbench.analysis.compare
import workbench.analysis.format
import workbench.analysis.plots
import workbench.core.losses
import workbench.core.metrics
import workbench.data.text


@pytest.mark.parametrize("module", [workbench.core.losses, workbench.core.metrics, workbench.analysis.compare,
                                    workbench.analysis.format, workbench.analysis.plots, workbench.data.text])
def test_docstring_examples_pass(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if module is not workbench.analysis.compare:
        assert result.attempted > 0
