"""MMK12 (hub: FanqingM/MMK12) -> verl RL parquet: train / test (the VGPO recipe validates on test).

Source columns: ``question``, ``answer``, ``image`` (one image; a list is accepted too), ``subject``
and ``id`` (kept in extra_info). Output layout: see ``verl_vgpo.data.vl_math``. The VGPO and PAPO authors
validate on PAPO's preprocessed copy ``PAPOGalaxy/PAPO_MMK12_test`` (columns ``images``, ``problem``,
``answer`` are accepted as well): ``--hub_name PAPOGalaxy/PAPO_MMK12_test --splits <its split>``.

    python examples/data_preprocess/mmk12.py --output_dir ~/data/mmk12 --splits test
    python examples/data_preprocess/mmk12.py --local_dataset_path /path/to/clone/of/MMK12
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

HUB_NAME = "FanqingM/MMK12"
DATA_SOURCE = "mmk12"
SPLITS = ("train", "test")
EXTRA_KEYS = ("subject", "source_id")


def convert_row(example, index, split, options):
    return make_row(
        data_source=DATA_SOURCE,
        split=split,
        index=index,
        question=require_field(example, ("question", "problem")),
        answer=require_field(example, ("answer",)),
        images=as_image_list(require_field(example, ("image", "images"))),
        image_root=None,
        extra={"subject": example.get("subject"), "source_id": example.get("id")},
        **options,
    )


def main(argv=None):
    parser = base_argument_parser(__doc__.splitlines()[0], HUB_NAME, os.path.expanduser("~/data/mmk12"), SPLITS)
    args = parser.parse_args(argv)
    options = row_options(args)
    convert_splits(
        args, DATA_SOURCE, EXTRA_KEYS, lambda split: functools.partial(convert_row, split=split, options=options)
    )


if __name__ == "__main__":
    main()
