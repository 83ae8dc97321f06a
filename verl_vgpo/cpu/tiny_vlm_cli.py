"""``vgpo-tiny-vlm``: build a tiny offline vision-language checkpoint (random weights, local tokenizer),
or with ``--warm-start`` fine-tune it supervised on easy-vqa first (cached by its settings).

    vgpo-tiny-vlm --out artifacts/tiny_vlm --family qwen3_vl
    vgpo-tiny-vlm --warm-start --out artifacts/tiny_vlm_warm
    vgpo-tiny-vlm --warm-start --task grid --out artifacts/tiny_vlm_warm_grid
"""

from __future__ import annotations

import argparse
import dataclasses

from verl_vgpo.cpu import warm_start
from verl_vgpo.cpu.tiny_vlm import DEFAULT_FAMILY, FAMILIES, PRESETS, TinyVLMSize, build_tiny_vlm


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="size preset (default: test; with --warm-start: warm)")
    parser.add_argument("--family", default=DEFAULT_FAMILY, choices=FAMILIES, help="model family (default %(default)s)")
    parser.add_argument(
        "--model-vocab-size", type=int, default=None, help="embedding/lm_head rows (default: the tokenizer size)"
    )
    parser.add_argument("--warm-start", action="store_true",
                        help="then fine-tune it supervised on --task (verl_vgpo.cpu.warm_start); cached by settings")
    warm_start.add_arguments(parser)
    for field in dataclasses.fields(TinyVLMSize):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "mrope_section":
            parser.add_argument(flag, type=int, nargs=3, default=None)
        elif "float" in str(field.type):
            parser.add_argument(flag, type=float, default=None)
        else:
            parser.add_argument(flag, type=int, default=None)
    args = parser.parse_args(argv)
    if args.task != warm_start.DEFAULT_TASK and not args.warm_start:
        parser.error(f"--task {args.task} needs --warm-start (the random build is the same for every task)")
    return args


def main(argv=None) -> None:
    args = _parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TinyVLMSize) if getattr(args, f.name) is not None
    }
    if args.warm_start:
        if args.model_vocab_size is not None:
            overrides["model_vocab_size"] = args.model_vocab_size
        warm_start.build_warm_start(args.out, warm_start.settings_from_args(args), **overrides)
        return
    path = build_tiny_vlm(
        args.out, seed=args.seed, preset=args.preset or "test", model_vocab_size=args.model_vocab_size, family=args.family,
        **overrides,
    )
    print(path)


if __name__ == "__main__":
    main()
