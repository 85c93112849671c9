"""Stage 2 on many Hugging Face causal-LM families, and in every saved dtype.

Each family is a tiny random config (transformers' own config class, no download) saved to a temporary directory
with a tiny tokenizer and loaded back through `SparkFlamingo.from_pretrained_parts`, as stage 2 does. For each:
the logits at initialisation equal the LM's own `forward` (its final soft-capping / logit scaling included); one
training step moves every trainable tensor; the image changes the output once the gates are open; cached ==
uncached greedy generation on a left-padded batch; cached == uncached beam search.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
import transformers as T
from transformers import AutoModelForCausalLM

from spark_vlm.models.flamingo import (FlamingoConfig, SparkFlamingo, UnsupportedLMError, find_decoder_layers,
                                       lm_final_logits)
from test_flamingo import EOS, VOCAB, images, left_pad, make_tokenizer, make_vision, reference_greedy, set_gates

_L = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          max_position_embeddings=64)
_H = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
FAMILIES = {
    "gpt2": lambda c: T.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **c),
    "llama": lambda c: T.LlamaConfig(**_L, **c),
    "opt": lambda c: T.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 max_position_embeddings=64, word_embed_proj_dim=16, **c),
    "qwen2": lambda c: T.Qwen2Config(**_L, **c),
    "qwen3": lambda c: T.Qwen3Config(**_L, head_dim=8, **c),
    "mistral": lambda c: T.MistralConfig(**_L, **c),
    "mixtral": lambda c: T.MixtralConfig(**_L, num_local_experts=2, num_experts_per_tok=1, **c),
    "phi": lambda c: T.PhiConfig(**_H, intermediate_size=64, **c),
    "phi3": lambda c: T.Phi3Config(**_L, **c),
    "gpt_neox": lambda c: T.GPTNeoXConfig(**_H, intermediate_size=64, **c),
    "gemma": lambda c: T.GemmaConfig(**_L, head_dim=8, **c),
    "stablelm": lambda c: T.StableLmConfig(**_L, **c),
    "olmo2": lambda c: T.Olmo2Config(**_L, **c),
    "gptj": lambda c: T.GPTJConfig(n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, **c),
    "codegen": lambda c: T.CodeGenConfig(n_embd=32, n_layer=2, n_head=4, n_positions=64, n_ctx=64, rotary_dim=4,
                                         **c),
    "xglm": lambda c: T.XGLMConfig(d_model=32, ffn_dim=64, num_layers=2, attention_heads=4,
                                   max_position_embeddings=64, **c),
    "biogpt": lambda c: T.BioGptConfig(**_H, intermediate_size=64, **c),
    # These four do not forward extra keyword arguments to their decoder layers (see gated_xattn.py).
    "falcon": lambda c: T.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **c),
    "bloom": lambda c: T.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **c),
    "gpt_neo": lambda c: T.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
                                        attention_types=[[["global", "local"], 1]], window_size=8, **c),
    "mpt": lambda c: T.MptConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=64, **c),
    # These four post-process the head's logits (soft-capping, logit scaling).
    "gemma2": lambda c: T.Gemma2Config(**_L, head_dim=8, sliding_window=8, **c),
    "gemma3": lambda c: T.Gemma3TextConfig(**_L, head_dim=8, sliding_window=8, final_logit_softcapping=3.0, **c),
    "cohere": lambda c: T.CohereConfig(**_L, logit_scale=0.5, **c),
    "granite": lambda c: T.GraniteConfig(**_L, logits_scaling=4.0, **c),
}


def family_config(family: str):
    cfg = FAMILIES[family](dict(vocab_size=VOCAB, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS))
    cfg.initializer_range = 0.2  # peaky random LMs: varied greedy continuations
    return cfg


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vision")
    make_vision().save_pretrained(path)
    return str(path)


def save_lm(family: str, path, dtype: torch.dtype = torch.float32) -> AutoModelForCausalLM:
    """A tiny random LM of `family` saved (in `dtype`) with the tiny tokenizer; returns the saved LM."""
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(family_config(family)).to(dtype).eval()
    lm.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return lm


def build(vision_dir: str, lm_dir, **kwargs) -> SparkFlamingo:
    cfg = FlamingoConfig(vision_width=32, num_latents=4, resampler_depth=1, resampler_heads=2, resampler_dim_head=8,
                         xattn_heads=2, xattn_dim_head=8, ff_mult=2)
    torch.manual_seed(1)
    return SparkFlamingo.from_pretrained_parts(cfg, vision_dir, str(lm_dir), **kwargs).eval()


# The whole matrix takes ~30-45 s on one core: the quick loop keeps one family that does not forward keyword
# arguments (Falcon) and one that soft-caps its logits (Gemma-2); the rest are `slow`.
QUICK = ("falcon", "gemma2")


@pytest.mark.parametrize("family", [f if f in QUICK else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES])
def test_family(family, vision_dir, tmp_path):
    torch.set_num_threads(1)
    reference = save_lm(family, tmp_path)
    model = build(vision_dir, tmp_path)
    img, eoc = model.image_token_id, model.eoc_token_id
    pv = images(2, 1)

    # 1) At initialisation: the LM's own logits (its final logit processing included).
    text = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(pv, text).logits[..., :VOCAB], reference(input_ids=text).logits,
                                   rtol=0, atol=1e-5)

    # 2) The image matters once the gates are open, only after the <image> token.
    set_gates(model, 0.5)
    ids = torch.cat([text[:, :2], torch.full((2, 1), img), text[:, 2:], torch.full((2, 1), eoc)], dim=1)
    with torch.no_grad():
        a, b = model(pv, ids).logits, model(-pv, ids).logits
    assert torch.equal(a[:, :2], b[:, :2]) and not torch.allclose(a[:, 2:], b[:, 2:])

    # 3) One training step moves every trainable tensor (perceiver, every xattn block, the two new tokens).
    model.train()
    start = {n: t.clone() for n, t in model.trainable_state_dict().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.0)
    labels = ids.clone()
    labels[:, :3] = -100
    model(pv, ids, labels=labels).loss.backward()
    opt.step()
    unchanged = [n for n, t in model.trainable_state_dict().items() if torch.equal(t, start[n])]
    assert unchanged == []
    model.eval()

    # 4) Cached == uncached greedy decoding on a left-padded batch == step-by-step forward(); beam search too.
    prompt, mask = left_pad([[img, 5, 6, 7, 8, 9], [img, 10, 11]])
    stop = [eoc]
    fast = model.generate(pv, prompt, mask, max_new_tokens=6, eos_token_id=stop)
    slow = model.generate(pv, prompt, mask, max_new_tokens=6, eos_token_id=stop, use_cache=False,
                          cache_visual=False)
    ref = reference_greedy(model, pv, prompt, mask, 6, stop, eoc)
    assert torch.equal(fast, ref) and torch.equal(slow, ref)
    beams = model.generate(pv, prompt, mask, max_new_tokens=5, num_beams=3)
    assert torch.equal(beams, model.generate(pv, prompt, mask, max_new_tokens=5, num_beams=3, use_cache=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_any_saved_dtype_trains_fp32_master_weights(dtype, vision_dir, tmp_path):
    """The frozen LM stays in its saved dtype; the trainable parts are fp32, so a small step moves all of them."""
    torch.set_num_threads(1)
    save_lm("llama", tmp_path, dtype)
    model = build(vision_dir, tmp_path)
    assert model.lm.dtype == dtype
    assert {p.dtype for p in model.trainable_parameters()} == {torch.float32}
    set_gates(model, 0.5)
    model.train()
    ids = torch.cat([torch.full((2, 1), model.image_token_id), torch.arange(5, 12).expand(2, -1),
                     torch.full((2, 1), model.eoc_token_id)], dim=1)
    start = {n: t.clone() for n, t in model.trainable_state_dict().items()}
    out = model(images(2, 1), ids, labels=ids)
    out.loss.backward()
    assert out.logits.dtype == dtype and torch.isfinite(out.loss)
    torch.optim.AdamW(model.trainable_parameters(), lr=1e-5, weight_decay=0.0).step()
    assert [n for n, t in model.trainable_state_dict().items() if torch.equal(t, start[n])] == []
    # An explicit lm_dtype overrides the saved one.
    assert build(vision_dir, tmp_path, lm_dtype=torch.float32).lm.dtype == torch.float32


def test_new_tokens_start_at_the_mean_of_what_the_embedding_returns(vision_dir, tmp_path):
    """Gemma-3 scales inside its embedding module (sqrt(hidden)); the new tokens must start on that scale."""
    save_lm("gemma3", tmp_path)
    model = build(vision_dir, tmp_path)
    embed = model.lm.get_input_embeddings()
    expected = embed.weight.float().mean(0) * 32 ** 0.5
    torch.testing.assert_close(model.new_token_embed.weight, expected.expand(2, -1))


def test_final_logit_processing_matches_the_families_formulas():
    """Hand-worked: Cohere multiplies by logit_scale, Granite divides by logits_scaling, Gemma-2 soft-caps."""
    x = torch.tensor([[-8.0, 0.0, 2.0]])
    assert torch.equal(lm_final_logits(family_config("cohere"), x), x * 0.5)
    assert torch.equal(lm_final_logits(family_config("granite"), x), x / 4.0)
    cap = family_config("gemma2").final_logit_softcapping
    assert torch.equal(lm_final_logits(family_config("gemma2"), x), cap * torch.tanh(x / cap))
    assert torch.equal(lm_final_logits(family_config("llama"), x), x)


def test_a_layer_that_never_runs_is_refused(vision_dir, tmp_path):
    """If the LM called its decoder layers around our wrappers, the image would have no effect: refuse."""
    save_lm("llama", tmp_path)
    model = build(vision_dir, tmp_path)
    stack = model.lm.model.layers
    original = stack[1]
    stack[1] = original.decoder_layer  # the LM now bypasses the wrapper of layer 1
    ids = torch.tensor([[model.image_token_id, 5, 6]])
    with pytest.raises(UnsupportedLMError, match=r"LlamaForCausalLM is not supported: .*decoder layers \[1\] did not"):
        model(images(1, 1), ids)


def test_lm_dtype_config_key():
    from spark_vlm.training.config import ConfigError, load_config
    from spark_vlm.training.stage2_config import Stage2Config

    assert load_config(Stage2Config, None, ["lm.dtype=bf16"]).lm.torch_dtype() == torch.bfloat16
    assert load_config(Stage2Config, None, []).lm.torch_dtype() == "auto"
    with pytest.raises(ConfigError, match="lm.dtype: must be one of"):
        load_config(Stage2Config, None, ["lm.dtype=fp8"])


def test_stage2_refuses_an_lm_whose_layers_the_media_does_not_reach(vision_dir, tmp_path, monkeypatch):
    """Before training, stage 2 runs one forward; a refusal becomes one line naming lm.path and the LM class."""
    from spark_vlm.training.errors import SetupError
    from spark_vlm.training.stage2 import build_model, check_lm_supported
    from spark_vlm.training.stage2_config import Stage2Config

    save_lm("falcon", tmp_path)
    model = build(vision_dir, tmp_path)
    image = torch.zeros(16, 16, 3, dtype=torch.uint8)  # one training input
    check_lm_supported(model, image)  # supported: nothing happens
    model.lm.transformer.h[0] = model.lm.transformer.h[0].decoder_layer  # the LM now bypasses our wrapper
    with pytest.raises(UnsupportedLMError, match=r"^FalconForCausalLM is not supported: .*layers \[0\] did not"):
        check_lm_supported(model, image)

    cfg = Stage2Config(vision_checkpoint=vision_dir)
    cfg.lm.path = str(tmp_path)
    assert build_model(cfg, Path(vision_dir), str(tmp_path), image).lm.config.model_type == "falcon"
    bypass = SparkFlamingo.__init__

    def init_then_bypass(self, *args, **kwargs):
        bypass(self, *args, **kwargs)
        self.lm.transformer.h[1] = self.lm.transformer.h[1].decoder_layer

    monkeypatch.setattr(SparkFlamingo, "__init__", init_then_bypass)
    with pytest.raises(SetupError, match=rf"^lm.path={tmp_path}: FalconForCausalLM is not supported") as err:
        build_model(cfg, Path(vision_dir), str(tmp_path), image)
    assert "\n" not in str(err.value)


def test_an_lm_without_a_recognisable_decoder_stack_is_refused():
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(family_config("llama"))
    lm.model.layers = torch.nn.ModuleList(list(lm.model.layers)[:1])  # 1 layer where the config says 2
    with pytest.raises(UnsupportedLMError, match="^LlamaForCausalLM is not supported: could not find its decoder"):
        find_decoder_layers(lm)
