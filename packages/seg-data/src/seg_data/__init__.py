"""seg_data (PKUSeg): segmentation datasets in their official layouts, joint transforms, a doctor.

>>> from seg_data import create_dataset, build_transforms, collate
>>> ds = create_dataset("synthetic", split="train", transforms=[{"RandomFlip": {}}])
>>> sample = ds[0]   # {"image": 3xHxW float32, "label": HxW int64 (255 = ignore), "meta": {...}}
"""

from ._errors import (
    CorruptFileError,
    DatasetError,
    LabelError,
    MissingFileError,
    UnsupportedImageError,
)
from ._io import read_image, read_label
from .collate import collate, seed_worker
from .datasets import (
    IGNORE_INDEX,
    SegmentationDataset,
    create_dataset,
    dataset_options,
    label_id_to_train_id,
    list_datasets,
    register_dataset,
    train_id_to_label_id,
)
from .datasets._palette import voc_colormap
from .doctor import CheckReport, check_dataset
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    build_transforms,
    list_transforms,
    register_transform,
)
from .visualize import colorize, overlay

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckReport",
    "Compose",
    "CorruptFileError",
    "DatasetError",
    "LabelError",
    "MissingFileError",
    "SegmentationDataset",
    "UnsupportedImageError",
    "build_transforms",
    "check_dataset",
    "collate",
    "colorize",
    "create_dataset",
    "dataset_options",
    "label_id_to_train_id",
    "list_datasets",
    "list_transforms",
    "overlay",
    "read_image",
    "read_label",
    "register_dataset",
    "register_transform",
    "seed_worker",
    "train_id_to_label_id",
    "voc_colormap",
]
