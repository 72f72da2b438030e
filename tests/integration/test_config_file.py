"""--config FILE (YAML, TOML, JSON or a run's config.json) sets any training option; flags given win;
--print-config writes the resolved config; a run's config.json reruns it."""

from __future__ import annotations

import json

import pytest

from workbench.cli.main import main
from workbench.store.runs import RunStore


def _printed(capsys, *argv) -> dict:
    assert main([*argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_print_config_is_what_config_reads_back(tmp_path, capsys):
    first = _printed(capsys, "distill", "--dataset", "wine", "--model", "mlp", "--width", "8", "--teacher", "tw",
                     "-T", "2", "--epochs", "5", "--seed", "3")
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(first))
    assert _printed(capsys, "distill", "--config", str(path)) == first
    again = _printed(capsys, "distill", "--config", str(path), "--epochs", "7", "--alpha", "0.5")
    assert again["epochs"] == 7 and again["method_params"] == {"temperature": 2.0, "alpha": 0.5}  # flags refine
    assert {k: v for k, v in again.items() if k not in ("epochs", "method_params")} == \
        {k: v for k, v in first.items() if k not in ("epochs", "method_params")}


@pytest.mark.parametrize("name, text", [
    ("cfg.yaml", "dataset: wine\nmodel: {family: mlp, width: 8}\nepochs: 3\nteacher: tw\nmethod: dkd\n"
                 "method_params: {beta: 4}\nlabels: 50\n"),
    ("cfg.toml", 'dataset = "wine"\nepochs = 3\nteacher = "tw"\nmethod = "dkd"\nlabels = 50\n'
                 '[model]\nfamily = "mlp"\nwidth = 8\n[method_params]\nbeta = 4\n'),
])
def test_yaml_and_toml_set_options_and_flags_override_them(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    c = _printed(capsys, "distill", "--config", str(path), "--epochs", "4")
    assert c["dataset"] == "wine" and c["model"]["width"] == 8 and c["teacher"] == "tw" and c["labels"] == 50
    assert c["epochs"] == 4  # the flag wins
    assert c["method"] == "dkd" and c["method_params"]["beta"] == 4.0 and c["method_params"]["temperature"] == 4.0
    assert c["batch_size"] == 16 and c["lr"] == 0.01  # unset: the data set's defaults, as without a file


def test_a_bad_config_file_is_one_sentence(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: wine\nepoch: 3\n")
    assert main(["distill", "--config", str(bad), "--print-config"]) == 2
    assert "unknown option(s) epoch; the options are" in capsys.readouterr().err
    assert main(["distill", "--config", str(tmp_path / "missing.toml"), "--print-config"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_yaml_billion_laughs_is_refused_before_it_expands(tmp_path, capsys):
    """Nine levels of nine aliases: 405 bytes that expand to 9⁹ values (before: 36 s and 2.9 GB, then 'out of
    memory'). The aliases are counted on the composed graph, where each is a shared node."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert main(["distill", "--config", str(bomb), "--print-config"]) == 2
    assert "expands to more than 10,000 values (nested aliases)" in capsys.readouterr().err
    anchors = tmp_path / "anchors.yaml"  # a few aliases are fine
    anchors.write_text("dataset: wine\nmodel: &m {family: mlp, width: 8}\nepochs: 3\nteacher: tw\n")
    assert main(["distill", "--config", str(anchors), "--print-config"]) == 0


def test_a_runs_config_json_reruns_it(tmp_path, capsys):
    runs = tmp_path / "runs"
    r = ["--runs-dir", str(runs), "--no-profile"]
    assert main(["teacher", "--dataset", "wine", "--model", "mlp", "--epochs", "8", "--run-id", "tw", *r]) == 0
    assert main(["distill", "--dataset", "wine", "--teacher", "tw", "--model", "mlp", "--width", "8", "--epochs", "6",
                 "-T", "2", "--labels", "40", "--seed", "5", "--no-scratch", "--run-id", "a", *r]) == 0
    assert main(["distill", "--config", str(runs / "a" / "config.json"), "--run-id", "b", "--no-scratch", *r]) == 0
    capsys.readouterr()
    store = RunStore(runs)
    a, b = store.get("a"), store.get("b")
    skip = {"run_id", "created", "command"}
    assert {k: v for k, v in a.config.items() if k not in skip} == {k: v for k, v in b.config.items() if k not in skip}
    assert a.summary["test"]["accuracy"] == b.summary["test"]["accuracy"]  # the same run, trained again
    assert [m["val_acc"] for m in a.metrics()] == [m["val_acc"] for m in b.metrics()]
