"""The hf_cpu server's cache of processed images: the n samples of a prompt reuse one processing."""

import numpy as np
import pytest
import torch
from PIL import Image

from verl_vgpo.cpu.generation import ImageInputsCache


def image(seed, side=56):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (side, side, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def processor(tiny_vlm_path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vlm_path)


def test_same_images_are_processed_once_and_equal_uncached(processor):
    cache = ImageInputsCache()
    first = cache.get(processor, [image(0)])
    again = cache.get(processor, [image(0)])  # another object with the same pixels, as each request brings
    assert again is first and (cache.hits, cache.misses) == (1, 1)
    plain = processor.image_processor(images=[image(0)], return_tensors="pt")
    assert torch.equal(first["pixel_values"], plain["pixel_values"])
    assert torch.equal(first["image_grid_thw"], plain["image_grid_thw"])


def test_other_pixels_sizes_or_lists_are_other_entries(processor):
    cache = ImageInputsCache()
    cache.get(processor, [image(0)])
    cache.get(processor, [image(1)])
    cache.get(processor, [image(0, side=84)])
    cache.get(processor, [image(0), image(1)])
    assert (cache.hits, cache.misses) == (0, 4)


def test_least_recently_used_entries_leave_first(processor):
    cache = ImageInputsCache(size=2)
    for seed in (0, 1, 0, 2):  # 0 is used again before 2 arrives, so 1 leaves
        cache.get(processor, [image(seed)])
    cache.get(processor, [image(0)])
    assert cache.hits == 2
    cache.get(processor, [image(1)])
    assert cache.misses == 4
