"""ViRL39K (hub: TIGER-Lab/ViRL39K) -> verl RL parquet: train (the VGPO recipe's training set).

Source columns: ``question``, ``answer`` (boxed, e.g. ``\\boxed{17}``: the box is removed for the ground
truth), ``image`` (list of image paths relative to the folder the release's ``images.zip`` is extracted
to: pass it as ``--image_root``; embedded images are accepted too), and ``category``, ``source``,
``qid``, ``PassRate_32BTrained``, ``PassRate_7BTrained`` (kept in extra_info as strings, so runs can
select by difficulty later). Output layout: see ``verl_vgpo.data.vl_math``. The VGPO and PAPO authors train on
PAPO's preprocessed copy with embedded images, ``--hub_name PAPOGalaxy/PAPO_ViRL39K_train`` (columns
``images``, ``problem``, ``answer`` are accepted as well; no --image_root needed).

    huggingface-cli download TIGER-Lab/ViRL39K --repo-type dataset --local-dir ~/raw/ViRL39K
    (cd ~/raw/ViRL39K && unzip -q images.zip)
    python examples/data_preprocess/virl39k.py --local_dataset_path ~/raw/ViRL39K --image_root ~/raw/ViRL39K
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

HUB_NAME = "TIGER-Lab/ViRL39K"
DATA_SOURCE = "virl39k"
SPLITS = ("train",)
EXTRA_KEYS = ("category", "source", "qid", "pass_rate_32b_trained", "pass_rate_7b_trained")


def convert_row(example, index, split, image_root, options):
    return make_row(
        data_source=DATA_SOURCE,
        split=split,
        index=index,
        question=require_field(example, ("question", "problem")),
        answer=require_field(example, ("answer",)),
        images=as_image_list(require_field(example, ("image", "images"))),
        image_root=image_root,
        extra={
            "category": example.get("category"),
            "source": example.get("source"),
            "qid": example.get("qid"),
            "pass_rate_32b_trained": example.get("PassRate_32BTrained"),
            "pass_rate_7b_trained": example.get("PassRate_7BTrained"),
        },
        **options,
    )


def main(argv=None):
    parser = base_argument_parser(__doc__.splitlines()[0], HUB_NAME, os.path.expanduser("~/data/virl39k"), SPLITS)
    parser.add_argument(
        "--image_root",
        default=None,
        help="folder the release's images.zip was extracted to (image paths in the data are relative to it)",
    )
    args = parser.parse_args(argv)
    options = row_options(args)
    image_root = os.path.expanduser(args.image_root) if args.image_root else None
    convert_splits(
        args,
        DATA_SOURCE,
        EXTRA_KEYS,
        lambda split: functools.partial(convert_row, split=split, image_root=image_root, options=options),
    )


if __name__ == "__main__":
    main()
