"""`kdw export | compress | publish-teacher`: a finished run as an artifact to ship, compressed step by step, or as a
shipped teacher."""

from __future__ import annotations

import sys

from workbench.cli import common
from workbench.logs import logger

log = logger("workbench.cli")


def cmd_export(args) -> int:
    """A finished run's student as ONNX (and int8, and pruned-then-distilled) variants, each measured in ONNX Runtime."""
    from workbench.analysis.compare import comparison_rows
    from workbench.deploy.export import ExportOptions, export_run
    from workbench.store.runs import RunStore

    if args.format in ("hf", "gguf"):
        return _export_hf(args)
    if args.format != "onnx":
        raise ValueError(f"unknown export format {args.format!r}; the workbench exports onnx, hf or gguf")
    options = ExportOptions(int8=args.int8, prune=args.prune, calibration=args.calibration,
                            finetune_epochs=args.finetune_epochs, int8_format=args.int8_format)
    store = RunStore(args.runs_dir)
    run = store.get(args.run_id)

    def progress(name, text, fraction):
        print(f"[{100 * fraction:3.0f}%] {name}: {text}", file=sys.stderr, flush=True)

    results = export_run(run, store, options, progress, command=common.command_line())
    for m in results:
        c = m["check"]
        score = (f"test ppl {m['test']['perplexity']:8,.1f}" if "perplexity" in m["test"] else
                 f"test acc {100 * m['test']['accuracy']:6.2f}%")
        print(f"{m['variant']:22s} {m['size_mb']:8.3f} MB  {score}  "
              f"top-1 = PyTorch on {100 * c['top1_agreement']:.2f}% (max |Δlogit| {c['max_abs_logit_diff']:.2g})"
              + (f"  [{m['quantization']}]" if m.get("quantization") else ""))
    for m in results:
        for note in m.get("notes") or []:
            log.info("%s: %s", m["variant"], note)
        advice = (m.get("int8_check") or {}).get("advice")
        if advice:
            log.warning("%s: %s", m["variant"], advice)
    print()
    print(common.table(comparison_rows([run]), args))
    print(f"\nvariants under {run.path / 'variants'}; `kdw compare {run.run_id}` lists them with the run")
    return 0


def _export_hf(args) -> int:
    """`kdw export RUN --format hf | gguf`: a Hugging Face folder or a GGUF file, loaded back by transformers and
    measured."""
    from workbench.deploy.gguf import export_gguf
    from workbench.deploy.hf import export_hf
    from workbench.store.runs import RunStore

    if args.int8 or args.prune is not None:
        raise ValueError("--int8 and --prune are ONNX variants; export them with --format onnx")
    store = RunStore(args.runs_dir)
    run = store.get(args.run_id)

    def say(text, f):
        print(f"[{100 * f:3.0f}%] {args.format}: {text}", file=sys.stderr, flush=True)

    m = export_hf(run, store, say) if args.format == "hf" else export_gguf(run, store, args.gguf_type, say)
    c = m["check"]
    print(f"{m['variant']} {m['size_mb']:8.3f} MB  test ppl {m['test']['perplexity']:8,.1f}  loaded by {c['loader']}: "
          f"top-1 = PyTorch on {100 * c['top1_agreement']:.2f}% (max |Δlogit| {c['max_abs_logit_diff']:.2g})")
    if args.format == "hf":
        print(f"\nthe folder: {m['folder']} (AutoModelForCausalLM.from_pretrained and AutoTokenizer load it)")
    else:
        print(f"\nthe file: {m['folder']}/model.gguf (llama.cpp, Ollama and LM Studio load it; so does "
              "AutoModelForCausalLM.from_pretrained(folder, gguf_file='model.gguf'))")
    return 0


def cmd_compress(args) -> int:
    """A pipeline over a finished run (prune → heal → quantize), every step a variant measured in ONNX Runtime."""
    from workbench.deploy.compress import CompressOptions, compress_run, parse_steps
    from workbench.store.runs import RunStore

    steps = parse_steps(args.steps)
    options = CompressOptions(epochs=args.epochs, calibration=args.calibration, int8_format=args.int8_format,
                              seed=args.seed)
    store = RunStore(args.runs_dir)
    run = store.get(args.run_id)

    def progress(name, text, fraction):
        where = "" if fraction is None else f"[{100 * fraction:3.0f}%] "
        print(f"{where}{name}: {text}", file=sys.stderr, flush=True)

    results = compress_run(run, store, steps, options, progress, command=common.command_line())
    print(compress_table(results))
    print(f"\nvariants under {run.path / 'variants'}; `kdw compare {run.run_id}` lists them with the run")
    return 0


def compress_table(results: list[dict]) -> str:
    """One line per variant: size, test score, agreement with the teacher, latency, and the fake-quant check."""
    lm = any("perplexity" in m["test"] for m in results)
    lines = [f"{'variant':34s} {'size MB':>8s} {'test ppl' if lm else 'test':>10s} {'agree T':>8s} {'ms (b1)':>8s} "
             f"{'tok/s b1' if lm else '/s (b256)':>10s}"]
    for m in results:
        test = m["test"]
        score = f"{test['perplexity']:10,.2f}" if lm else f"{100 * test['accuracy']:9.2f}%"
        agree = test.get("agreement")
        prof = m["profile"]
        line = (f"{m['variant']:34s} {m['size_mb']:8.3f} {score:>10s} "
                f"{'' if agree is None else f'{100 * agree:7.2f}%':>8s} {prof['latency_ms']:8.3f} "
                f"{prof['tokens_per_s_b1'] if lm else prof['throughput']:10,.0f}")
        check = m.get("fake_quant_check")
        if check:
            line += f"  fake-quant = artifact on {100 * check['top1_agreement']:.2f}%"
        lines.append(line)
    return "\n".join(lines)


def cmd_publish_teacher(args) -> int:
    """Copy a finished run's best weights into assets/teachers with a card that says how to reproduce it."""
    from workbench.store.runs import RunStore
    from workbench.train.teachers import publish_teacher

    weights, card = publish_teacher(RunStore(args.runs_dir).get(args.run_id), args.name, args.to)
    print(f"wrote {weights} ({card['size_mb']:.2f} MB) and {weights.with_suffix('.json')}")
    return 0


def register(add) -> dict:
    """The deployment commands' parsers; returns {command: handler}."""
    s = add("export", "a finished run's student as ONNX (and int8, and pruned), measured in ONNX Runtime; "
                      "the variants live under runs/RUN/variants/")
    s.add_argument("run_id", metavar="RUN")
    s.add_argument("--format", default="onnx", choices=["onnx", "hf", "gguf"],
                   help="onnx (default: ONNX Runtime variants); hf: a language model as a Hugging Face folder "
                        "(save_pretrained with its tokenizer); gguf: a LLaMA-architecture language model as a GGUF "
                        "file for llama.cpp. hf and gguf are loaded back by transformers and measured")
    s.add_argument("--gguf-type", default="f16", choices=["f16", "q8_0", "f32"],
                   help="--format gguf: the matrices' type (default f16; q8_0: llama.cpp's 8-bit blocks of 32)")
    s.add_argument("--int8", action="store_true", help="also an int8 variant (ONNX Runtime quantization: static QDQ "
                                                       "with calibration for conv nets, dynamic for MLPs)")
    s.add_argument("--prune", type=float, default=None, metavar="FRACTION",
                   help="also a pruned variant: remove this fraction of each layer's channels, then distil again")
    s.add_argument("--int8-format", default="auto", choices=["auto", "s8s8", "reduce-range", "u8u8"],
                   help="int8 data types: auto (default) takes reduce-range (7-bit weights) on x86 CPUs without "
                        "VNNI, where 8-bit products can saturate, and s8s8 elsewhere; u8u8 never saturates")
    s.add_argument("--calibration", type=int, default=512, help="training images that calibrate int8 (default 512)")
    s.add_argument("--finetune-epochs", type=int, default=3, help="epochs of distillation after pruning (default 3)")
    common.add_common(s)
    s = add("compress", "a pipeline over a finished run: prune, heal with the teacher, quantize (PTQ, QAT or "
                        "quantization-aware distillation); every step a variant measured in ONNX Runtime")
    s.add_argument("run_id", metavar="RUN")
    s.add_argument("--steps", required=True,
                   help="steps in order, comma-separated: prune:FRACTION, heal:kd|ce, then any of ptq, qat and qad "
                        "(each from the float model before it) at int8 (classifiers) or int4 (language models' "
                        "weights); e.g. prune:0.5,heal:kd,ptq:int8,qat:int8,qad:int8 or ptq:int4,qad:int4")
    s.add_argument("--epochs", type=int, default=3, help="epochs of each training step: heal, qat, qad (default 3)")
    s.add_argument("--calibration", type=int, default=512,
                   help="training samples that calibrate int8 activation ranges (default 512)")
    s.add_argument("--int8-format", default="auto", choices=["auto", "s8s8", "reduce-range", "u8u8"],
                   help="int8 data types, as for kdw export (auto: by this CPU)")
    s.add_argument("--seed", type=int, default=None, help="the training steps' seed (default: the run's)")
    common.add_common(s)
    s = add("publish-teacher", "copy a finished teacher run into assets/teachers with its card")
    s.add_argument("run_id", metavar="RUN")
    s.add_argument("--name", required=True, help="teacher name, e.g. fashion-mnist-cnn")
    s.add_argument("--to", default=None, help="folder (default: assets/teachers)")
    common.add_common(s)
    return {"export": cmd_export, "compress": cmd_compress, "publish-teacher": cmd_publish_teacher}
