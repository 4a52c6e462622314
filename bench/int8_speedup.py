"""Re-measure the int8 speed-up a model records, on an idle machine: no stored speed-up may exceed what alternating
rounds measure now by more than 15 %.

    python bench/int8_speedup.py runs/horse/horse.onnx --images ../shared/data/weizmann_horse/images/val
    python bench/int8_speedup.py runs/horse/horse.fold0.onnx --images DIR --rounds 15 --quiet 0.5

Reads <name>.int8.onnx beside MODEL, its `int8_speedup` and `int8_timing`; waits (at most --wait s) until the
1-minute load average is below --quiet; then times both files with exporting.evidence.measure_speedup, the code
export.py measured with (the first images of DIR at the model's input size, a warm-up, rounds that alternate which
file goes first, each file's median ms per image), over --rounds rounds. Verdict: met when the recorded speed-up is
at most 1.15x the measured one. Exit code 1 when missed, 2 when the int8 file stored no speed-up, 3 when the
load stayed above the cores while measuring (nothing to compare). Writes
bench/results/int8_speedup.json (or --out) with the machine before and after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine_info, wait_quiet, write_result  # noqa: E402
from exporting import evidence  # noqa: E402
from runtime.lineage import file_metadata  # noqa: E402
from runtime.precision import int8_sibling  # noqa: E402
from utils import list_images  # noqa: E402

MARGIN = 1.15  # a stored speed-up may be at most this much above the idle re-measurement


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="the fp32 .onnx; its <name>.int8.onnx sits beside it")
    parser.add_argument("--images", type=Path, required=True, help="a folder of photos (its top level), e.g. the "
                        "held-back ones the export measured on")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds (export.py takes "
                        f"{evidence.ROUNDS})")
    parser.add_argument("--quiet", type=float, default=1.0, help="wait for a 1-minute load average below this")
    parser.add_argument("--wait", type=float, default=300.0, help="wait at most this many seconds for it")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/int8_speedup.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    int8 = int8_sibling(args.model)
    meta, int8_meta = file_metadata(args.model), file_metadata(int8) if int8.is_file() else None
    if meta is None or int8_meta is None:
        raise SystemExit(f"{args.model} and {int8.name} beside it, both with segpipe metadata, are needed")
    recorded, timing = int8_meta.get("int8_speedup"), int8_meta.get("int8_timing") or {}
    images = list_images(args.images, recursive=False)[:timing.get("images", evidence.SPEED_IMAGES)]
    start_info = machine_info()
    load = wait_quiet(args.quiet, args.wait)
    measured = evidence.measure_speedup(args.model, int8, images, meta, rounds=args.rounds, tries=1)
    result = {"model": str(args.model), "int8": int8.name, "images": len(images), "recorded": recorded,
              "recorded_timing": timing, "measured": measured, "load_before": load, "margin": MARGIN}
    if recorded is None:
        result["verdict"] = "no stored speed-up (" + str(timing.get("not_stored") or "not measured") + ")"
    elif "speedup" not in measured:
        result["verdict"] = f"not measured: {measured['not_stored']}"
    else:
        limit = MARGIN * measured["speedup"]
        result["verdict"] = f"{'met' if recorded <= limit else 'MISSED'} (recorded {recorded:.2f}x, measured " \
                            f"{measured['speedup']:.2f}x, limit {limit:.2f}x)"
    print(f"{int8.name}: {result['verdict']}")
    write_result("int8_speedup", result, args.out, start_info)
    return 0 if result["verdict"].startswith("met") else 2 if recorded is None else 3 if "speedup" not in measured \
        else 1


if __name__ == "__main__":
    sys.exit(main())
