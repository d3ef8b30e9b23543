"""Data: the text corpus, and activation datasets built from it and read back.

* :mod:`~mechdemo.data.corpus`: documents from the offline corpus (Python's documentation), a local
  file or folder, or a Hub dataset, filtered and cut into fixed-length chunks;
* :mod:`~mechdemo.data.extract`: the activations at chosen sites for every token (:func:`extract`),
  crash-safe and resumable;
* :mod:`~mechdemo.data.dataset`: :class:`ActivationDataset`, the reader.
"""

from mechdemo.data.corpus import OFFLINE_CORPUS, PILE, check_corpus, iter_chunks, iter_documents
from mechdemo.data.dataset import FORMAT, MANIFEST, NORM_STATS, ActivationDataset, from_uint16, to_uint16
from mechdemo.data.extract import COMPUTE_DTYPES, ExtractConfig, extract, merge_manifest, plan_shards
from mechdemo.data.hub import check_hub_repo, push_dataset

__all__ = [
    "COMPUTE_DTYPES", "FORMAT", "MANIFEST", "NORM_STATS", "OFFLINE_CORPUS", "PILE", "ActivationDataset",
    "ExtractConfig", "check_corpus", "check_hub_repo", "extract", "from_uint16", "iter_chunks", "iter_documents",
    "merge_manifest", "plan_shards", "push_dataset", "to_uint16",
]
