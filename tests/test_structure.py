"""The package's structure: its import layers (import-linter's contract in pyproject.toml), and no
module reaching into another's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mechdemo"


def test_the_import_layers_hold():
    """core → analyses → tasks → figures → CLI: nothing imports upward, no cycles (`lint-imports`)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is missing: `make setup` installs the dev dependencies (import-linter)")
    done = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: dict[str, str] = {}  # local name -> mechdemo module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechdemo"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {alias.name}")
                if node.module == "mechdemo" or (PACKAGE / node.module.split(".", 1)[-1].replace(".", "/")).is_dir():
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mechdemo.") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    found = [use for path in sorted(PACKAGE.rglob("*.py")) for use in _private_uses(path)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


# The public names of the modules mechdemo 0.1 had (read from its source): each still imports from the
# old path, with a DeprecationWarning, until 0.3 (mechdemo.deprecated).
OLD_API = {
    "circuits": ["check_head", "copying_scores", "effective_embedding", "full_ov_circuit", "head_weights",
                 "k_composition_scores", "kv_head", "mean_score_by_offset", "ov_circuit", "ov_eigenvalue_scores",
                 "positional_qk", "qk_circuit", "unembedding"],
    "ablation": ["Head", "faithfulness", "logit_diff_with_ablation", "mean_ablation_hooks", "mean_head_outputs"],
    "edge_patching": ["Baseline", "FINAL", "Graph", "INPUT", "MAX_COPIES", "PromptPairs", "Suffix", "baselines",
                      "edge_patched_resid", "faithfulness", "faithfulness_many", "forward_to_final_resid", "mix",
                      "prune", "random_scores", "run_suffix", "sender_outputs", "suffix_of", "top_edges",
                      "graph_hooks"],
    "edge_attribution": ["IG_STEPS", "METHODS", "dot", "eap_and_eap_ig", "edge_scores"],
    "ioi_circuit": ["IOICircuit", "NAME_ATTENTION", "ROLES", "attention_between", "find_ioi_circuit"],
    "datasets": ["ActivationDataset", "Batch", "COMPUTE_DTYPES", "ExtractConfig", "FORMAT", "MANIFEST", "NORM_STATS",
                 "ShardPlan", "check_hub_repo", "extract", "from_uint16", "merge_manifest", "plan_shards", "to_uint16",
                 "check_writable", "folder_written_atomically"],
    "corpus": ["Chunk", "LOCAL_SUFFIXES", "MAX_CHARS", "OFFLINE_CORPUS", "PILE", "check_corpus", "chunk_document",
               "good", "iter_chunks", "iter_documents", "python_version_tag"],
    "feature_browser": ["AFTER", "ASSETS", "BANDS", "BEFORE", "BrowserConfig", "CHUNK", "HIST_BINS", "MARKER",
                        "N_CONTEXTS", "N_LOGITS", "N_NEIGHBOURS", "N_TOP_TOKENS", "PAGES", "PER_BAND", "SPARK_BINS",
                        "build_browser", "check_site_out", "compute_browser", "decoder_neighbours", "highlight_html",
                        "nonzero_activations", "run_bounds", "site_bytes", "text_activations", "ui_strings",
                        "write_site"],
    # packages now, same import path
    "sae": ["ARCHITECTURES", "DENSE_THRESHOLD", "SAETrainConfig", "TRAIN_CONFIG", "TRAIN_THREADS", "check_batch_fits",
            "check_sae_out", "data_provider", "default_layer", "encode_batches", "evaluate_sae", "evaluate_saes",
            "heldout_sequences", "load_sae", "logit_effects", "make_sae", "promoted_tokens", "reconstruction_metrics",
            "sae_bytes", "save_sae", "spliced_loss", "spliced_losses", "split_shards", "token_contexts",
            "top_activations", "train_sae"],
    "ioi": ["IOIBatch", "NAMES", "OBJECTS", "PLACES", "TEMPLATES", "check_prompt_file", "ioi_batch", "ioi_batches",
            "load_prompts", "logit_diff_of", "require_corrupted", "single_token_words", "summary"],
    "circuit_discovery": ["DISCOVERY_SEED", "EVALUATION_SEED", "N_HELD_OUT_PER_TEMPLATE", "N_PER_TEMPLATE", "TARGET",
                          "TEMPLATES", "curve_sizes", "discover_ioi", "edge_list", "faithfulness_curve", "heads_in",
                          "ioi_pairs", "ioi_prompt_sets", "node_circuit", "smallest_circuit", "steps_of"],
    "models": ["DEFAULT_MODEL", "GGUFPackage", "ModelSpec", "availability", "compared_with", "default_device",
               "default_dtype", "dequantized_weights", "full_precision_norms", "get_spec", "gguf_file", "load_model",
               "model_spec_of", "offline_tokenizer", "offline_vocab_size", "random_model", "register_model",
               "to_float64", "wrap"],
}


@pytest.mark.parametrize("module", sorted(OLD_API))
def test_old_import_paths_still_work_and_say_where_things_went(module):
    import importlib
    import warnings

    from mechdemo.deprecated import MOVED

    name = f"mechdemo.{module}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.modules.pop(name, None) if name in MOVED else None
        mod = importlib.import_module(name)
        missing = [n for n in OLD_API[module] if not hasattr(mod, n)]
    assert not missing, f"{name} lost {missing}"
    if name in MOVED:  # a moved module warns, naming the new path
        assert any(issubclass(w.category, DeprecationWarning) and MOVED[name][0][0] in str(w.message) for w in caught)
        assert not (PACKAGE / f"{module}.py").exists()  # no file at the old path: the import hook serves it
