"""chsnn's data layer: static and event data sets by name, and spike encodings.

```python
from chsnn.data import load_dataset, DATASETS, encode, DataBundle

bundle = load_dataset("ndigits")                       # built in, no download
bundle = load_dataset("mnist:/path/to/dir", seed=0)    # files you already have
bundle = load_dataset("random", input_shape=(3, 32, 32), n_classes=10)  # smoke runs
x, y = bundle.train[0]      # float32 tensor, int
```

Every set is an entry of the dataset registry (:mod:`chsnn.data.registry`):
``dataset_info("mnist")`` gives its shape, classes, kind and options, and
``@register_dataset`` adds your own (docs/extending_dataset.md).

Static sets give images in [0, 1] (C, H, W); event sets give frames of event
counts (T, 2, H, W) binned with tonic (SHD: (T, 700)). Nothing is downloaded;
missing or corrupt files raise errors that say what is wrong and where. The
dataset cards in ``datasets/`` describe each set's source, files and licence.
"""

from chsnn.data import catalog  # noqa: F401  (registers the built-in sets)
from chsnn.data._base import EVENT_DTYPE, ArrayDataset, DataBundle, DataError, MissingDataError, stratified_folds, stratified_split
from chsnn.data.digits import ndigits_cache_path, ndigits_events
from chsnn.data.encoding import ENCODINGS, encode
from chsnn.data.frames import events_to_frames
from chsnn.data.neuromorphic import read_nmnist_file
from chsnn.data.registry import (
    DATASET_SHAPES,
    DATASETS,
    DataRequest,
    DatasetInfo,
    dataset_info,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from chsnn.data.synthetic import smoke_data

__all__ = [
    "DATASETS",
    "DATASET_SHAPES",
    "ENCODINGS",
    "EVENT_DTYPE",
    "ArrayDataset",
    "DataBundle",
    "DataError",
    "DataRequest",
    "DatasetInfo",
    "MissingDataError",
    "dataset_info",
    "encode",
    "events_to_frames",
    "load_dataset",
    "ndigits_cache_path",
    "ndigits_events",
    "read_nmnist_file",
    "register_dataset",
    "smoke_data",
    "stratified_folds",
    "stratified_split",
    "unregister_dataset",
]
