"""The VGPO paper's ten evaluation benchmarks -> ``<output_dir>/<key>.parquet`` (verl RL layout), one per key.

Nine come from PAPO's evaluation set (hub: PAPO-Galaxy/PAPO_eval), GeoMath from Look-Back's evaluation
data (a local copy only). Sources, splits and the row layout: ``verl_vgpo.data.paper_eval``.

    python examples/data_preprocess/paper_eval.py --output_dir ~/data/paper_eval --lookback_data_path ~/Look-Back/eval/eval_data
    python examples/data_preprocess/paper_eval.py --local_dataset_path /path/to/clone/of/PAPO_eval --benchmarks geo3k mmk12

Then: ``vgpo-evaluate --suite paper --data_dir ~/data/paper_eval --model_path ckpt/hf --output_dir eval/paper``.
"""

from __future__ import annotations

import argparse
import os
import sys

from verl_vgpo.data.paper_eval import PAPER_KEYS, convert_benchmarks
from verl_vgpo.data.vl_math import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS, ConversionError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=os.path.expanduser("~/data/paper_eval"))
    parser.add_argument("--benchmarks", nargs="+", choices=PAPER_KEYS, default=list(PAPER_KEYS))
    parser.add_argument("--local_dataset_path", default=None, help="a local copy of PAPO-Galaxy/PAPO_eval instead of the hub")
    parser.add_argument("--lookback_data_path", default=None, help="Look-Back's eval_data folder (holds GeoMath/)")
    parser.add_argument("--max_rows", type=int, default=None, help="convert only the first N rows of each benchmark")
    parser.add_argument("--min_pixels", type=int, default=PAPER_MIN_PIXELS)
    parser.add_argument("--max_pixels", type=int, default=PAPER_MAX_PIXELS)
    parser.add_argument("--processor_pixel_limits", action="store_true", help="write no pixel bounds")
    args = parser.parse_args(argv)
    bounds = (None, None) if args.processor_pixel_limits else (args.min_pixels, args.max_pixels)
    try:
        convert_benchmarks(
            args.benchmarks,
            args.output_dir,
            local_dataset_path=args.local_dataset_path,
            lookback_data_path=args.lookback_data_path,
            max_rows=args.max_rows,
            min_pixels=bounds[0],
            max_pixels=bounds[1],
        )
    except ConversionError as error:
        print(f"paper_eval: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
