"""Your own models and data: torchvision, timm and factory specs, weights from files, image folders (in memory
and streamed), CSV manifests, CIFAR-100, different teacher and student sizes, and every bad input as a sentence."""

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import kdw, make_image_folder
from torch import nn

from workbench.data.datasets import load_dataset
from workbench.errors import DataError, ModelError
from workbench.models.zoo import ModelConfig, build_model, check_input, load_weights, parse_model
from workbench.train.loop import TrainConfig, train

FACTORY = '''
import torch
from torch import nn

def make_model(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))

def broken(num_classes, input_shape):
    raise RuntimeError("out of ideas")

def not_a_model(num_classes, input_shape):
    return "a string"
'''


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "imgs", broken=1)


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY)
    return path


# ---------------------------------------------------------------------------
# model sources

@pytest.mark.parametrize("spec, label", [("torchvision:resnet18", "torchvision:resnet18"),
                                         ("torchvision:mobilenet_v2", "torchvision:mobilenet_v2"),
                                         ("timm:resnet10t", "timm:resnet10t"),
                                         ("cnn", "cnn(d=1, w=16)")])
def test_each_model_source_builds_a_classifier_for_the_data(spec, label):
    cfg = parse_model(spec)
    model = build_model(cfg, (3, 32, 32), 7)
    assert cfg.label() == label and model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    if cfg.family in ("torchvision", "timm"):
        assert model.kdw_mean == (0.485, 0.456, 0.406) and "embedding" in model.stages


def test_a_library_model_is_normalised_by_its_own_config_and_only_classifiers_are_offered():
    from workbench.errors import ModelError
    from workbench.models.zoo import classification_models, model_preprocessing

    vit = build_model(parse_model("timm:vit_tiny_patch16_224"), (3, 32, 32), 5)  # timm's ViTs use 0.5, not ImageNet
    assert vit.kdw_mean == (0.5, 0.5, 0.5) and vit.kdw_std == (0.5, 0.5, 0.5) and vit.kdw_native_size == 224
    pre = model_preprocessing(parse_model("torchvision:resnet18"))
    assert pre["mean"] == (0.485, 0.456, 0.406) and pre["input_size"] == 224 and "weights transforms" in pre["source"]
    names = classification_models()
    assert "resnet18" in names and "fasterrcnn_resnet50_fpn" not in names and "raft_small" not in names
    with pytest.raises(ModelError, match="torchvision has no classification model 'fasterrcnn_resnet50_fpn'"):
        build_model(parse_model("torchvision:fasterrcnn_resnet50_fpn"), (3, 32, 32), 5)


def test_a_factory_from_a_file_and_from_a_module(factory_file, monkeypatch):
    cfg = parse_model(f"{factory_file}:make_model")
    assert build_model(cfg, (1, 8, 8), 10)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    monkeypatch.syspath_prepend(str(factory_file.parent))
    assert build_model(parse_model("my_models:make_model"), (3, 16, 16), 4)(torch.zeros(1, 3, 16, 16)).shape == (1, 4)


def test_any_module_as_student_and_teacher_in_the_python_api(store, digits):
    from workbench.train.teachers import as_teacher

    teacher_net = build_model(ModelConfig("cnn", depth=1, width=8), (1, 8, 8), 10)
    student_net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    cfg = TrainConfig(kind="kd", dataset="digits", teacher="python-teacher", epochs=2, profile=False)
    summary = train(cfg, store=store, dataset=digits, student=student_net, teacher=as_teacher(teacher_net))
    assert summary["_model"] is student_net and summary["test"]["accuracy"] > 0.1
    assert summary["teacher"]["source"] == "python"


@pytest.mark.parametrize("spec, message", [
    ("", "no model given"), ("torchvision:", "needs a name"), ("torchvision:resnet9000", "torchvision has no classification model"),
    ("timm:no_such_net", "timm has no model"), ("something.py:", "names no model"), ("hyper", "unknown model family"),
])
def test_a_spec_that_names_no_model(spec, message):
    with pytest.raises(ModelError, match=message):
        build_model(parse_model(spec), (3, 32, 32), 10)


def test_a_factory_that_raises_or_returns_the_wrong_thing(factory_file):
    with pytest.raises(ModelError, match="raised RuntimeError: out of ideas"):
        build_model(parse_model(f"{factory_file}:broken"), (1, 8, 8), 10)
    with pytest.raises(ModelError, match="returned a str, not a torch.nn.Module"):
        build_model(parse_model(f"{factory_file}:not_a_model"), (1, 8, 8), 10)
    with pytest.raises(ModelError, match="does not exist"):
        build_model(parse_model("nowhere/x.py:make_model"), (1, 8, 8), 10)


def test_a_missing_timm_says_how_to_install_it(monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name == "timm"
                        else real(name, *a, **k))
    with pytest.raises(ModelError, match=r"pip install -e '\.\[timm\]'"):
        build_model(parse_model("timm:resnet10t"), (3, 32, 32), 10)


def test_a_channel_count_or_an_image_size_that_does_not_fit_is_one_sentence():
    m = build_model(parse_model("torchvision:resnet18"), (1, 32, 32), 10)
    with pytest.raises(ModelError, match="takes 3-channel images and these have 1; pass --channels 3"):
        check_input(m, (1, 32, 32))
    m = build_model(parse_model("torchvision:resnet50"), (3, 8, 8), 10)
    with pytest.raises(ModelError, match=r"8×8 images are too small for torchvision:resnet50.*at least 32 works"):
        check_input(m, (3, 8, 8))


def test_offline_pretrained_weights_say_which_file_to_fetch_and_where(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(ModelError, match=r"Download https://download.pytorch.org/models/resnet18.*\.pth to .*checkpoints"):
        build_model(parse_model("torchvision:resnet18", pretrained=True), (3, 32, 32), 10)


# ---------------------------------------------------------------------------
# weights from files

def test_a_state_dict_with_an_imagenet_head_gets_a_new_head(tmp_path):
    import torchvision

    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = build_model(parse_model("torchvision:resnet18"), (3, 32, 32), 3)
    report = load_weights(model, path)
    assert report["new_layers"] == ["fc"] and report["loaded"] > 100


def test_safetensors_and_wrapped_state_dicts_load(tmp_path):
    from safetensors.torch import save_file

    src = build_model(ModelConfig("cnn", depth=1, width=8), (1, 8, 8), 10)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        dst = build_model(ModelConfig("cnn", depth=1, width=8), (1, 8, 8), 10)
        assert load_weights(dst, tmp_path / name)["new_layers"] == []
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_a_checkpoint_whose_shapes_do_not_fit_lists_the_first_keys(tmp_path):
    torch.save(build_model(ModelConfig("cnn", depth=1, width=16), (1, 8, 8), 10).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ModelError, match=r"features.0.0.0.weight: expected \(8, 1, 3, 3\), found \(16, 1, 3, 3\)"):
        load_weights(build_model(ModelConfig("cnn", depth=1, width=8), (1, 8, 8), 10), tmp_path / "w.pth")


def test_a_pickled_full_model_is_refused_with_how_to_save_a_state_dict(tmp_path):
    torch.save(build_model(ModelConfig("mlp", depth=1, width=8), (1, 8, 8), 10), tmp_path / "full.pth")
    with pytest.raises(ModelError, match=r"pickled model, not a state dict.*torch.save\(model.state_dict\(\), PATH\)"):
        load_weights(build_model(ModelConfig("mlp", depth=1, width=8), (1, 8, 8), 10), tmp_path / "full.pth")


# ---------------------------------------------------------------------------
# data

def test_an_image_folder_is_decoded_once_and_the_corrupt_file_counted(folder, monkeypatch):
    from workbench.data import images

    ds = load_dataset("image-folder", folder, image_size=16)
    assert ds.input_shape == (3, 16, 16) and ds.classes == ("cat", "dog", "fox")
    assert len(ds.skipped) == 1 and "broken0.png" in ds.skipped[0]
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 36
    monkeypatch.setattr(images, "decode_one", lambda *a: pytest.fail("decoded again despite the cache"))
    again = load_dataset("image-folder", folder, image_size=16)
    assert torch.equal(again.x_test, ds.x_test)


def test_streamed_and_in_memory_data_give_the_same_batches_and_training(folder, store):
    mem = load_dataset("image-folder", folder, image_size=16, stream=False)
    lazy = load_dataset("image-folder", folder, image_size=16, stream=True)
    assert lazy.streamed and not mem.streamed
    assert torch.allclose(lazy.x_train[:], mem.x_train) and torch.equal(lazy.y_train, mem.y_train)
    base = dict(kind="teacher", dataset="image-folder", data_dir=str(folder), image_size=16, batch_size=8,
                model=ModelConfig("cnn", depth=1, width=8), epochs=2, profile=False, augment="flip")
    a = train(TrainConfig(**base, stream=False), store=store)
    b = train(TrainConfig(**base, stream=True), store=store)
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]  # the same images, the same steps


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.mkdir(), p)[1], "needs one subfolder of images per class"),
    (lambda p: (p.mkdir(), (p / "a").mkdir(), (p / "b").mkdir(), p)[-1], "has no images"),
])
def test_bad_image_folders_are_one_sentence(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_dataset("image-folder", make(tmp_path / "data"))


def test_a_class_whose_every_image_is_corrupt_is_refused_with_a_path(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3)
    for p in (root / "b").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"no image of class 'b' could be decoded, e.g. .*b/"):
        load_dataset("image-folder", root)


def test_a_csv_manifest_with_its_own_test_split(folder, tmp_path):
    rows = ["path,label,split"]
    for i, p in enumerate(sorted(folder.rglob("[0-9]*.png"))):
        rows.append(f"{p.relative_to(tmp_path)},{p.parent.name},{'test' if i % 4 == 0 else 'train'}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset("csv", tmp_path / "manifest.csv", image_size=12)
    assert len(ds.x_test) == 9 and ds.classes == ("cat", "dog", "fox") and ds.input_shape == (3, 12, 12)
    (tmp_path / "bad.csv").write_text("path,label\nnope.png,cat\nalso.png,dog\n")
    with pytest.raises(DataError, match="image nope.png does not exist"):
        load_dataset("csv", tmp_path / "bad.csv")


def test_cifar100_reads_its_python_batches(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 200), ("test", 50)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [i % 100 for i in range(n)]}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.classes[7] == "c7" and ds.input_shape == (3, 32, 32) and len(ds.x_test) == 50


# ---------------------------------------------------------------------------
# teacher and student at different sizes

def test_teacher_logits_are_cached_at_the_teachers_own_size(store, digits):
    """The shipped digits teacher sees 8×8 grey images; the student trains at 16×16 in colour."""
    from workbench.train import teachers as tm

    tm._MEMORY.clear()
    cfg = TrainConfig(kind="kd", dataset="digits", teacher="digits-cnn", model=ModelConfig("cnn", depth=1, width=8),
                      image_size=16, channels=3, epochs=1, profile=False)
    summary = train(cfg, store=store, dataset=digits)
    assert summary["input_shape"] == [3, 16, 16] and summary["teacher"]["test"]["accuracy"] > 0.95
    cached = {p.name.split("-")[2] for p in (store.cache_dir / "teacher-logits").glob("*.safetensors")}
    assert cached == {digits.fingerprint}  # the teacher's view is the native data set: its cache is reused


@pytest.mark.slow
def test_the_commands_of_the_issue_work_as_written(folder, tmp_path):
    import torchvision

    runs = str(tmp_path / "runs")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50_imagenet.pth")
    kdw("teacher", "--dataset", "image-folder", "--data-dir", str(folder), "--model", "torchvision:resnet18",
        "--image-size", "32", "--epochs", "1", "--run-id", "t1", "--runs-dir", runs)
    kdw("distill", "--dataset", "image-folder", "--data-dir", str(folder), "--teacher", "t1", "--model",
        "torchvision:mobilenet_v2", "--image-size", "32", "--epochs", "1", "--no-scratch", "--runs-dir", runs)
    proc = kdw("teacher", "--dataset", "image-folder", "--data-dir", str(folder), "--model", "torchvision:resnet50",
               "--init", str(tmp_path / "resnet50_imagenet.pth"), "--image-size", "32", "--epochs", "1",
               "--run-id", "r50", "--runs-dir", runs)
    summary = json.loads((tmp_path / "runs" / "r50" / "summary.json").read_text())
    assert summary["init"]["new_layers"] == ["fc"] and summary["model_label"] == "torchvision:resnet50"
    assert "Traceback" not in proc.stderr
    html = tmp_path / "r.html"
    kdw("report", "r50", "-o", str(html), "--runs-dir", runs)
    assert "new layers: fc" in html.read_text()


# ---------------------------------------------------------------------------
# the app and the widgets take paths and specs, and say what is wrong with them

def test_the_train_page_takes_an_image_folder_and_a_torchvision_student(folder, tmp_path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string("from workbench.app.train import page\npage()", default_timeout=120).run()
    at.selectbox(key="tr_dataset").select("image-folder").run()
    at.text_input(key="tr_dataset_path").set_value(str(tmp_path / "nowhere")).run()
    assert any("does not exist" in e.value for e in at.error) and not at.exception
    at.text_input(key="tr_dataset_path").set_value(str(folder)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("could not be decoded" in c.value for c in at.caption)  # the broken file is counted
    at.radio(key="tr_student_source").set_value("torchvision").run()
    at.text_input(key="tr_student_name_torchvision").set_value("resnet50").run()
    assert any("at least 32 works" in e.value or "parameters" in c.value for e in at.error for c in at.caption) \
        or any("torchvision:resnet50" in c.value for c in at.caption)
    at.text_input(key="tr_student_name_torchvision").set_value("resnet9000").run()
    assert any("torchvision has no classification model 'resnet9000'" in e.value for e in at.error)
    at.text_input(key="tr_init").set_value(str(tmp_path / "missing.pth")).run()
    assert any("No weights file" in e.value for e in at.error)


def test_feature_methods_offer_the_models_own_layers(digits):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string("from workbench.app.train import page\npage()", default_timeout=120).run()
    at.selectbox(key="tr_dataset").select("digits").run()
    at.selectbox(key="tr_student_family").select("cnn").run()
    at.selectbox(key="tr_method").select("fitnet").run()
    assert not at.exception, [e.value for e in at.exception]
    options = at.selectbox(key="tr_method_fitnet_student_stage").options
    assert options[0] == "auto" and "stage2" in options and "features.0.0.0" in options  # stages, then module paths


def test_the_distill_panel_takes_a_model_spec_and_a_folder(folder):
    pytest.importorskip("ipywidgets")
    from workbench.notebook.widgets import DistillPanel

    p = DistillPanel(dataset="digits")
    p.family.value = "spec"
    p.spec.value = "torchvision:resnet18"
    p.image_size.value = 32
    assert "torchvision:resnet18</b> at 3×32×32" in p.size.value
    cfg = p.configs()[-1]
    assert cfg.model.label() == "torchvision:resnet18" and cfg.channels == 3 and cfg.image_size == 32
    p.spec.value = "timm:nope_net"
    assert "timm has no model" in p.size.value
    p.dataset.value = "image-folder"
    assert "give the path" in p.size.value
    p.data_dir.value = str(folder)
    p.family.value = "cnn"
    assert "cnn(d=1, w=64)</b> at 3×32×32" in p.size.value and p.teacher.options == ()
    with pytest.raises(ValueError, match="needs a teacher"):  # no teacher was trained on this folder yet
        p.configs()
    p.method.value = "dml"  # mutual learning needs none
    assert p.configs()[-1].data_dir == str(folder)
