"""The Indirect Object Identification task (Wang et al. 2022): prompts, what the model does on them,
and its circuit found by path patching.

* :mod:`~mechdemo.ioi.prompts`: templates, names, :class:`IOIBatch` (clean and corrupted prompts,
  answers and positions), a user's prompt file;
* :mod:`~mechdemo.ioi.report`: logit differences, accuracy and DLA of a set of prompts;
* :mod:`~mechdemo.ioi.circuit`: the circuit, found by path patching as Wang et al. did.
"""

from mechdemo.ioi.circuit import NAME_ATTENTION, ROLES, IOICircuit, attention_between, find_ioi_circuit
from mechdemo.ioi.prompts import (
    NAMES, OBJECTS, PLACES, TEMPLATES, IOIBatch, check_prompt_file, ioi_batch, ioi_batches, load_prompts,
    require_corrupted, single_token_words,
)
from mechdemo.ioi.report import file_order, ioi_report, logit_diff_of, prompt_batches, summary

__all__ = [
    "NAMES", "NAME_ATTENTION", "OBJECTS", "PLACES", "ROLES", "TEMPLATES", "IOIBatch", "IOICircuit",
    "attention_between", "check_prompt_file", "file_order", "find_ioi_circuit", "ioi_batch", "ioi_batches",
    "ioi_report", "load_prompts", "logit_diff_of", "prompt_batches", "require_corrupted", "single_token_words",
    "summary",
]
