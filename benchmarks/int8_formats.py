"""int8 per CPU: each int8 format's agreement with fp32, accuracy and latency, for the shipped teachers.

    python benchmarks/int8_formats.py          # both shipped teachers (Fashion-MNIST needs its Debian data)

For each shipped teacher this exports ONNX fp32 once and quantizes it with every `--int8-format` (s8s8,
reduce-range, u8u8) on 512 calibration images, then runs each artifact in ONNX Runtime on the whole test set:
top-1 agreement with the fp32 model, test accuracy, and latency at batch 1 (median of at least 30 calls), all in
one process on the same threads. It prints the CPU's int8 features and what `auto` chooses here. Writes
benchmarks/out/int8_formats.json and prints the markdown table of docs/deployment.md.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from workbench.data.datasets import available_datasets, load_dataset
from workbench.deploy.export import (
    calibration_images,
    cpu_int8_features,
    export_onnx,
    int8_settings,
    measure,
    quantize_int8,
)
from workbench.train.teachers import load_teacher, shipped_teachers


def main() -> None:
    cpu = cpu_int8_features()
    auto = int8_settings("auto", cpu)
    print(f"CPU: {cpu['arch']}, VNNI: {cpu['vnni']}, flags: {' '.join(cpu['flags'] or ['unknown'])}")
    print(f"auto chooses {auto['format']} ({auto['why']})\n")
    rows = []
    for card in shipped_teachers():
        if available_datasets().get(card["dataset"]) is not None:
            print(f"skipped {card['name']}: {card['dataset']} is not installed")
            continue
        teacher = load_teacher(card["name"])
        model = teacher.model.float().eval()
        dataset = load_dataset(card["dataset"])
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            fp32 = export_onnx(model, dataset.input_shape, folder / "fp32")
            base = measure(folder / "fp32", model, dataset, None)
            rows.append({"teacher": card["name"], "format": "fp32", "agreement": base["check"]["top1_agreement"],
                         "accuracy": base["test"]["accuracy"], "latency_ms": base["profile"]["latency_ms"]})
            for fmt in ("s8s8", "reduce-range", "u8u8"):
                quantize_int8(fp32, folder / fmt, calibration_images(dataset, 512), fmt, cpu)
                m = measure(folder / fmt, model, dataset, None)
                rows.append({"teacher": card["name"], "format": fmt, "agreement": m["check"]["top1_agreement"],
                             "accuracy": m["test"]["accuracy"], "latency_ms": m["profile"]["latency_ms"],
                             "busy": m["profile"].get("cpu_busy_elsewhere")})
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "int8_formats.json").write_text(json.dumps({"cpu": cpu, "auto": auto["format"], "rows": rows}, indent=2))
    print("| teacher | artifact | top-1 agreement with fp32 % | test acc % | latency ms (b=1) |")
    print("|---|---|---|---|---|")
    for r in rows:
        name = "ONNX fp32" if r["format"] == "fp32" else f"ONNX int8, {r['format']}" + \
            (" (auto here)" if r["format"] == auto["format"] else "")
        print(f"| {r['teacher']} | {name} | {100 * r['agreement']:.2f} | {100 * r['accuracy']:.2f} | "
              f"{r['latency_ms']:.3f} |")


if __name__ == "__main__":
    main()
