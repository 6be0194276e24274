"""ReID data: layout parsers returning plain records, the embedded synthetic data set, stand-ins in the real layouts,
oskt-owned data folders, the up-front image check, transforms (PIL and on-device), P x K sampling, loaders (PIL or a
decode-once cache) and few-shot subsets."""

from oskt.data.augment import DeviceAugment
from oskt.data.cache import CachedImages, cache_bytes, use_memory_cache
from oskt.data.fewshot import few_shot_ids, subset_records
from oskt.data.layouts import check_images, dataset_path, detect_layout, load_dataset, load_layout, read_image
from oskt.data.loaders import ImageDataset, build_test_loader, build_train_loader
from oskt.data.ownership import check_owned, write_owned
from oskt.data.records import ImageRecord, ReIDDataset, holdout_split, relabel
from oskt.data.sampler import RandomIdentitySampler
from oskt.data.standin import make_standin
from oskt.data.synthetic import make_synthetic
from oskt.data.transforms import build_test_transform, build_train_transform, normalization
from oskt.data.verify import ImageCheck, verify_images

__all__ = [
    "CachedImages",
    "DeviceAugment",
    "ImageCheck",
    "ImageDataset",
    "ImageRecord",
    "RandomIdentitySampler",
    "ReIDDataset",
    "build_test_loader",
    "cache_bytes",
    "build_test_transform",
    "build_train_loader",
    "build_train_transform",
    "check_images",
    "check_owned",
    "dataset_path",
    "detect_layout",
    "few_shot_ids",
    "holdout_split",
    "load_dataset",
    "load_layout",
    "make_standin",
    "make_synthetic",
    "normalization",
    "read_image",
    "relabel",
    "subset_records",
    "use_memory_cache",
    "verify_images",
    "write_owned",
]
