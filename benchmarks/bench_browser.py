"""The SAE feature browser: what building it costs, against the per-feature approach.

The issue's budget: the browser of the 1,152-feature SAE that ``make figures`` trains, built in at
most 60 s on this 2-core CPU, at most 5 MB. Measured here on an SAE of that shape (the figures'
TopK k=32 on the offline model's middle layer, trained on the same kind of dataset):

1. :func:`mechdemo.sae.feature_pages`: one batched encoding pass over the held-out
   shard, every non-zero activation kept and sorted once; then writing the site;
2. the per-feature approach of a dashboard that computes one feature at a time (encode the whole
   held-out shard, read one column, sort it): measured on a sample of features and extrapolated
   to all of them (printed as an extrapolation).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(sample: int = 16) -> None:
    from mechdemo.data.corpus import OFFLINE_CORPUS
    from mechdemo.data import ActivationDataset, ExtractConfig, extract, from_uint16
    from mechdemo.sae import FeaturePagesConfig, feature_pages
    from mechdemo.sites import site_bytes, ui_strings, write_browser
    from mechdemo.figures.i18n import LANGUAGES, translations
    from mechdemo.models import load_model
    from mechdemo.sae import SAETrainConfig, default_layer, split_shards, train_sae

    model = load_model(device="cpu")
    layer = default_layer(model.cfg.model_name, model.cfg.n_layers)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ExtractConfig(model=model.cfg.model_name, layer=layer, corpus=OFFLINE_CORPUS, shard_size=5_000,
                            max_tokens=20_000)
        extract(cfg, Path(tmp) / "acts", model=model, progress=False)
        data = ActivationDataset(Path(tmp) / "acts")
        sae = train_sae(data, SAETrainConfig(architecture="topk", k=32, expansion=2, training_tokens=32_000),
                        progress=False)
        ui = {lang: translations(ui_strings(), lang) for lang in LANGUAGES}

        start = time.perf_counter()
        site = feature_pages(sae, data, model, FeaturePagesConfig(), progress=False)
        computed = time.perf_counter() - start
        files = write_browser(site, Path(tmp) / "site", ui)
        built = time.perf_counter() - start
        size = site_bytes(Path(tmp) / "site")

        _, (heldout,) = split_shards(data)
        x = from_uint16(data.shard_bits(heldout)).float()
        start = time.perf_counter()
        with torch.no_grad():
            for f in range(sample):
                column = sae.encode(x)[:, f]  # one feature at a time: the whole shard encoded again
                column[column > 0].sort(descending=True)
        per_feature = (time.perf_counter() - start) / sample
    d_sae = sae.cfg.d_sae
    print(f"{d_sae:,} features, {len(x):,} held-out tokens, {torch.get_num_threads()} threads")
    print(f"one pass: computed in {computed:.1f} s, site written in {built:.1f} s total "
          f"({len(files)} files, {size / 1e6:.2f} MB; budget 60 s and 5 MB)")
    print(f"per feature: {per_feature * 1000:.0f} ms each, {per_feature * d_sae:.0f} s for all {d_sae:,} "
          f"(extrapolated from {sample}): {per_feature * d_sae / computed:.0f}x the one pass")


if __name__ == "__main__":
    main()
