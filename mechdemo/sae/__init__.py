"""Sparse autoencoders: training and evaluating them with SAELens on mechdemo's activation datasets, and
reading what their features mean.

* :mod:`~mechdemo.sae.training`: the three architectures (ReLU + L1, TopK, JumpReLU), the data
  provider over an :class:`~mechdemo.data.ActivationDataset`, training (the module docstring says what
  comes from SAELens and why the rest is written here);
* :mod:`~mechdemo.sae.storage`: saving and loading (SAELens's format);
* :mod:`~mechdemo.sae.evaluation`: L0, explained variance, dead / dense features, the spliced loss;
* :mod:`~mechdemo.sae.features`: top activations, logit effects, contexts, activations on any text;
* :mod:`~mechdemo.sae.feature_pages`: everything the feature browser shows, in one pass.
"""

from mechdemo.sae.evaluation import (
    DEGENERATE_FRACTION, DENSE_THRESHOLD, encode_batches, evaluate_sae, evaluate_saes, heldout_sequences, reconstruction_metrics,
    spliced_loss, spliced_losses,
)
from mechdemo.sae.feature_pages import (
    BANDS, CHUNK, FeaturePagesConfig, decoder_neighbours, feature_pages, nonzero_activations, run_bounds,
)
from mechdemo.sae.features import (
    PICK_FREQUENCY, distinct_passages, feature_intervention, logit_effects, pick_features, pick_hypothesis_features,
    promoted_tokens, text_activations, token_contexts, token_hypotheses, top_activations,
)
from mechdemo.sae.storage import TRAIN_CONFIG, check_sae_matches, check_sae_out, load_sae, sae_bytes, save_sae
from mechdemo.sae.training import (
    ARCHITECTURES, TRAIN_THREADS, SAETrainConfig, check_batch_fits, data_provider, default_layer, hook_of,
    make_sae, split_shards, train_sae,
)

__all__ = [
    "ARCHITECTURES", "BANDS", "CHUNK", "DEGENERATE_FRACTION", "DENSE_THRESHOLD", "PICK_FREQUENCY", "TRAIN_CONFIG", "TRAIN_THREADS",
    "FeaturePagesConfig", "SAETrainConfig", "check_batch_fits", "check_sae_matches", "check_sae_out",
    "data_provider", "decoder_neighbours", "distinct_passages", "feature_intervention", "default_layer", "encode_batches", "evaluate_sae", "evaluate_saes",
    "feature_pages", "heldout_sequences", "hook_of", "load_sae", "logit_effects", "make_sae", "nonzero_activations",
    "pick_features", "pick_hypothesis_features", "promoted_tokens", "reconstruction_metrics", "run_bounds", "sae_bytes", "save_sae",
    "spliced_loss", "spliced_losses", "split_shards", "text_activations", "token_contexts", "token_hypotheses", "top_activations",
    "train_sae",
]
