"""End-to-end CLI benchmark: `dalle generate` of N images, from process start to files written.

    python bench/bench_generate.py --images 4 --repeats 3 [--model DIR]

Runs the installed command (or `python -m cli.main`) in a fresh process each time,
so interpreter start, imports, model loading, sampling, decoding and PNG writing
all count. Prints each wall time and the median.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", default="a storefront that says OpenAI")
    ap.add_argument("--model", default=None, help="bundle directory (default: the embedded model)")
    args = ap.parse_args()
    exe = [shutil.which("dalle")] if shutil.which("dalle") else [sys.executable, "-m", "cli.main"]
    times = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            cmd = [*exe, "generate", args.prompt, "-n", str(args.images), "--seed", str(i), "--out", out, "-q",
                   "--device", "cpu"]
            if args.model:
                cmd += ["--model", args.model]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t)
        print(f"run {i}: {times[-1]:.2f} s")
    print(f"dalle generate -n {args.images}: median {statistics.median(times):.2f} s over {len(times)} runs "
          f"(process start to files written)")


if __name__ == "__main__":
    main()
