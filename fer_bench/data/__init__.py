"""Datasets (DESIGN.md section 2): ``FERDataset``, the adapter contract, ``load_dataset`` and the built-in adapters.

An adapter is a small declarative class (the mteb habit): its card (docstring), the splits it has,
the options it takes with their defaults, and one ``load(split, root, **options)`` that returns a
``FERDataset``. Adapters register with ``@register_dataset(name)``; options arrive from the command
line as ``--dataset name:opt=value,...`` and are checked against the declaration.

The package, bottom up: ``dataset`` (``FERDataset`` and what is derived from it), ``paths`` (dataset
folders, the guard on paths named by annotation files), ``cache`` (the decode cache and the table cache),
``faces`` (Haar face crops), ``decode`` (image files -> cached pixels), ``adapter`` (the contract:
``DatasetAdapter``, ``FileAdapter``, ``load_dataset``), then one module per dataset, each registering its
adapter when imported (``synthetic`` is a sub-package). ``verify`` is ``fer-bench datasets verify``;
``noise`` (label noise) and ``augment`` (batch augmentation) work on loaded datasets.

Adding a dataset is one new module with one registered adapter class, imported below (a test fails for
a registered adapter that importing ``fer_bench.data`` does not register).
"""
from fer_bench.data.adapter import (DatasetAdapter, available_splits, coerce_like, load_dataset,
                                    parse_dataset_spec)
from fer_bench.data.cache import CACHE_ENV, cache_dir
from fer_bench.data.dataset import FERDataset, fingerprint_of, in_label_space, stratified_holdout
from fer_bench.data.paths import DATA_ENV, data_root
from fer_bench.registry import DATASETS, get_dataset, register_dataset

# The built-in adapters: importing a module registers its dataset(s).
from fer_bench.data import affectnet, ckplus, fer2013, ferplus, folder, jaffe, nimstim, rafdb, synthetic  # noqa: F401

__all__ = ["CACHE_ENV", "DATASETS", "DATA_ENV", "DatasetAdapter", "FERDataset", "available_splits", "cache_dir",
           "coerce_like", "data_root", "fingerprint_of", "get_dataset", "in_label_space", "load_dataset",
           "parse_dataset_spec", "register_dataset", "stratified_holdout"]
