"""easy-vqa (offline PyPI package: coloured-shape images, one-word answers) to verl's RL parquet files.

A thin command around verl_vgpo.data.easy_vqa, which holds the format (prompt, rationale target, answer
extraction, rows) shared with the reward, the warm start and the demo. Named easy_vqa_shapes.py so that,
run as a script, this file does not shadow the ``easy_vqa`` package it reads from.

    python examples/data_preprocess/easy_vqa_shapes.py --local_save_dir data/easy_vqa --train_size 64 --val_size 16
"""

from verl_vgpo.data.easy_vqa import main

if __name__ == "__main__":
    main()
