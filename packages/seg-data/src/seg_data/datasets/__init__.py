"""Datasets in their official on-disk layouts, plus a folder and a synthetic dataset.

Importing this package registers every dataset with :func:`create_dataset`.
"""

from ._registry import create_dataset, dataset_options, list_datasets, register_dataset
from .ade20k import ADE20K, ADE20K_CLASSES
from .base import IGNORE_INDEX, SampleFiles, SegmentationDataset
from .camvid import CAMVID_CLASSES, CamVid
from .cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_IDS,
    Cityscapes,
    label_id_to_train_id,
    train_id_to_label_id,
)
from .folder import FolderDataset
from .pascal_context import CONTEXT_CLASSES, PascalContext
from .synthetic import SyntheticShapes
from .voc import VOC_CLASSES, PascalVOC

__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "CAMVID_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_IDS",
    "CONTEXT_CLASSES",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "CamVid",
    "Cityscapes",
    "FolderDataset",
    "PascalContext",
    "PascalVOC",
    "SampleFiles",
    "SegmentationDataset",
    "SyntheticShapes",
    "create_dataset",
    "dataset_options",
    "label_id_to_train_id",
    "list_datasets",
    "register_dataset",
    "train_id_to_label_id",
]
