"""Image data for training and experiments: loaders, pixel ranges, deterministic batches.

Nothing here downloads anything; every loader takes a path to files the user fetched (or, for the
digits, data shipped inside scikit-learn).

    from jdiff import data

    train = data.load_cifar10("~/data/cifar-10-batches-py", split="train")   # uint8 (50000, 32, 32, 3)
    small = data.downsample(train, 2)                                        # CIFAR-10 at 16x16
    sampler = data.BatchSampler(small, batch_size=128, seed=0)               # flips on
    images, labels = sampler.batch(step)        # float32 (128, 16, 16, 3) in [-1, 1], int32 (128,)

    digits = data.load_digits("train")                                       # uint8 (1438, 8, 8, 1)
    sampler = data.BatchSampler(digits, 64, seed=0, flip=False)              # never flip digits
    pixels = data.from_model_range(samples)                                  # back to uint8
"""

from .cifar10 import CIFAR10_CLASSES, load_cifar10, read_batch
from .dataset import ImageDataset, class_subset, subset
from .digits import load_digits, stratified_split
from .sampler import BatchSampler
from .transforms import downsample, from_model_range, to_model_range

__all__ = ["CIFAR10_CLASSES", "BatchSampler", "ImageDataset", "class_subset", "downsample", "from_model_range",
           "load_cifar10", "load_digits", "read_batch", "stratified_split", "subset", "to_model_range"]
