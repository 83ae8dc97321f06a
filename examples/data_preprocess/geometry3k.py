"""Geometry3K (hub: hiyouga/geometry3k) -> verl RL parquet: train / validation / test.

Source columns: ``images`` (list of images), ``problem`` (text with an ``<image>`` placeholder),
``answer`` (final answer). Output layout: see ``verl_vgpo.data.vl_math``.

    python examples/data_preprocess/geometry3k.py --output_dir ~/data/geometry3k
    python examples/data_preprocess/geometry3k.py --local_dataset_path /path/to/clone/of/geometry3k
"""

from __future__ import annotations

import functools
import os

from verl_vgpo.data.vl_math import (
    as_image_list,
    base_argument_parser,
    convert_splits,
    make_row,
    require_field,
    row_options,
)

HUB_NAME = "hiyouga/geometry3k"
DATA_SOURCE = "geometry3k"
SPLITS = ("train", "validation", "test")
EXTRA_KEYS = ()


def convert_row(example, index, split, options):
    return make_row(
        data_source=DATA_SOURCE,
        split=split,
        index=index,
        question=require_field(example, ("problem",)),
        answer=require_field(example, ("answer",)),
        images=as_image_list(require_field(example, ("images",))),
        image_root=None,
        extra={},
        **options,
    )


def main(argv=None):
    parser = base_argument_parser(__doc__.splitlines()[0], HUB_NAME, os.path.expanduser("~/data/geometry3k"), SPLITS)
    args = parser.parse_args(argv)
    options = row_options(args)
    convert_splits(
        args, DATA_SOURCE, EXTRA_KEYS, lambda split: functools.partial(convert_row, split=split, options=options)
    )


if __name__ == "__main__":
    main()
