"""The oracle vision tower (stage 2's upper bound): exact object tokens from the scenes' ground truth, saved and
loaded like a backbone, fed through the same perceiver -> cross-attention path; and dynamic padding."""
import numpy as np
import pytest
import torch

from spark_vlm.data.images import blank_like, to_pixel_values
from spark_vlm.data.oracle_tokens import OBJECT_TOKEN_DIM, scene_tokens, scenes_tokens
from spark_vlm.data.padding import trim_right_padding
from spark_vlm.data.scene_vocab import COLORS, SHAPES
from spark_vlm.data.scenes import BACKGROUNDS, cached_scenes
from spark_vlm.models import SparkModel
from spark_vlm.models.flamingo import FlamingoConfig, SparkFlamingo
from spark_vlm.models.oracle_vision import OracleVision, OracleVisionConfig, load_vision_tower
from test_flamingo import make_lm, make_tokenizer, make_vision, set_gates, single_thread  # noqa: F401 (autouse)


def test_scene_tokens_hand_worked():
    objects = [{"shape": "star", "color": "blue", "size": "large", "center": (16.0, 48.0)},
               {"shape": "ring", "color": "white", "size": "small", "center": (32.0, 8.0)}]
    tokens = scene_tokens(objects, "noise", image_size=64, max_objects=3)
    assert tokens.shape == (4, OBJECT_TOKEN_DIM) and tokens.dtype == np.float32
    n_shapes, n_colors = len(SHAPES), len(COLORS)
    star = np.zeros(OBJECT_TOKEN_DIM, np.float32)
    star[SHAPES.index("star")] = 1
    star[n_shapes + list(COLORS).index("blue")] = 1
    star[n_shapes + n_colors + 1] = 1  # large
    star[n_shapes + n_colors + 2:n_shapes + n_colors + 4] = (0.25, 0.75)
    star[n_shapes + n_colors + 4] = 1  # an object
    np.testing.assert_array_equal(tokens[0], star)
    assert tokens[1, SHAPES.index("ring")] == 1 and tokens[1, n_shapes + n_colors] == 1  # small
    assert not tokens[2].any()  # no third object
    background = np.zeros(OBJECT_TOKEN_DIM, np.float32)
    background[OBJECT_TOKEN_DIM - len(BACKGROUNDS) + BACKGROUNDS.index("noise")] = 1
    np.testing.assert_array_equal(tokens[3], background)
    with pytest.raises(ValueError, match="3 objects but the oracle holds at most 2"):
        scene_tokens(objects + objects[:1], "solid", 64, max_objects=2)


def test_scenes_tokens_match_each_scenes_ground_truth(tmp_path):
    scenes = cached_scenes("val", 12, 32, cache_dir=str(tmp_path))
    tokens = scenes_tokens(scenes, max_objects=6)
    assert tokens.shape == (12, 7, OBJECT_TOKEN_DIM)
    for i in range(12):
        objects = scenes[i]["objects"]
        assert tokens[i, :, len(SHAPES) + len(COLORS) + 4].sum() == len(objects)  # the "is an object" column
        assert [SHAPES[k] for k in tokens[i, :len(objects), :len(SHAPES)].argmax(1)] == [o["shape"] for o in objects]
    np.testing.assert_array_equal(blank_like(torch.from_numpy(tokens)), np.zeros_like(tokens))
    assert int(blank_like(torch.zeros(1, 4, 4, 3, dtype=torch.uint8)).unique()) == 128


def test_oracle_tower_saves_loads_and_refuses_pixels(tmp_path):
    oracle = OracleVision(OracleVisionConfig(max_objects=4))
    oracle.save_pretrained(tmp_path / "oracle")
    loaded = load_vision_tower(tmp_path / "oracle")
    assert isinstance(loaded, OracleVision) and loaded.config.num_patches == 5
    x = torch.rand(2, 5, OBJECT_TOKEN_DIM)
    assert torch.equal(loaded.image_features(x), x)
    with pytest.raises(ValueError, match="expects object tokens"):
        loaded.image_features(torch.rand(2, 3, 16, 16))
    make_vision().save_pretrained(tmp_path / "vit")
    assert isinstance(load_vision_tower(tmp_path / "vit"), SparkModel)
    assert torch.equal(to_pixel_values(x.double()), x.float())  # float inputs are features: passed through


def oracle_captioner() -> SparkFlamingo:
    cfg = FlamingoConfig(vision_width=OBJECT_TOKEN_DIM, num_latents=4, resampler_depth=1, resampler_heads=2,
                         resampler_dim_head=8, xattn_heads=2, xattn_dim_head=8, ff_mult=2)
    torch.manual_seed(0)
    return SparkFlamingo(cfg, OracleVision(OracleVisionConfig(max_objects=4)), make_lm("gpt2"), make_tokenizer()).eval()


def test_the_captioner_reads_oracle_tokens_through_the_same_path():
    model = oracle_captioner()
    set_gates(model, 1.0)
    tokens = torch.rand(3, 5, OBJECT_TOKEN_DIM)
    ids = torch.cat([torch.full((3, 1), model.image_token_id), torch.arange(5, 11).expand(3, -1)], dim=1)
    with torch.no_grad():
        one = model(tokens, ids).logits  # [B, K, dim]: one "image" per sequence
        many = model(tokens[:, None], ids).logits  # [B, M=1, K, dim]
        blank = model(blank_like(tokens)[:, None], ids).logits
    torch.testing.assert_close(one, many)
    assert not torch.allclose(one, blank)
    mask = torch.ones(3, 1, dtype=torch.long)
    generated = model.generate(tokens[:, None], ids[:, :1], mask, max_new_tokens=4)
    assert generated.shape[0] == 3
    assert torch.equal(generated, model.generate(tokens, ids[:, :1], mask, max_new_tokens=4, use_cache=False))


def test_dynamic_padding_changes_no_loss():
    model = oracle_captioner()
    set_gates(model, 1.0)
    prompts_rows = [[model.image_token_id, 5, 6, 7, model.eoc_token_id], [model.image_token_id, 8, model.eoc_token_id]]
    ids = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    for i, row in enumerate(prompts_rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    batch = {"images": torch.rand(2, 5, OBJECT_TOKEN_DIM), "input_ids": ids, "attention_mask": mask,
             "labels": ids.masked_fill(mask == 0, -100)}
    trimmed = trim_right_padding(batch)
    assert trimmed["input_ids"].shape == (2, 5) and torch.equal(trimmed["images"], batch["images"])
    with torch.no_grad():
        full = model(batch["images"], ids, mask, labels=batch["labels"]).loss
        short = model(trimmed["images"], trimmed["input_ids"], trimmed["attention_mask"], labels=trimmed["labels"]).loss
    torch.testing.assert_close(full, short)


def test_the_oracle_captioner_learns_to_read_its_tokens():
    """The upper-bound path end to end in miniature: captions that name the colour one-hot-coded in the tokens are
    learnt from the tokens (the loss with each caption's own tokens falls clearly below the loss with another
    sample's tokens); with the gates closed (before training) the two are equal."""
    from spark_vlm.data.pairs import CaptionedImages
    from spark_vlm.data.prompts import FlamingoPrompts
    from spark_vlm.training.stage2_eval import caption_losses

    model = oracle_captioner()
    colours = ["red", "blue", "green", "yellow", "purple"]
    g = np.random.default_rng(0)
    which = g.integers(0, len(colours), 80)
    tokens = np.zeros((80, 5, OBJECT_TOKEN_DIM), np.float32)
    tokens[np.arange(80), 0, len(SHAPES) + which] = 1  # one object; its colour column
    captions = [[f"a {colours[k]} cube"] for k in which]
    prompts = FlamingoPrompts(model.tokenizer)
    train = CaptionedImages(tokens[:64], captions[:64], list(range(64)), tokenizer=prompts, max_len=12)
    val = CaptionedImages(tokens[64:], captions[64:], list(range(16)), tokenizer=prompts, max_len=12)
    cube = torch.tensor(prompts.caption_ids("cube"))  # the object word (one token in this tokenizer)
    before = caption_losses(model, val, prompts, torch.device("cpu"), object_ids=cube)
    assert before["image_contribution"] == 0.0

    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    for step in range(150):
        idx = torch.randint(0, 64, (16,))
        batch = trim_right_padding({k: v[idx] for k, v in train.text.items()})
        loss = model(train.images[idx], batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = caption_losses(model.eval(), val, prompts, torch.device("cpu"), object_ids=cube)
    assert after["image_contribution"] > 0.3, after
    assert after["val_caption_loss"] < after["val_caption_loss_blank_image"]

    # The per-token losses against a slow per-token loop (tokens 2..n; the object word "cube").
    objects = set(cube.tolist())
    nll_all, nll_obj, nll_full = [], [], []
    with torch.no_grad():
        for i in range(len(val)):
            row = val.text["attention_mask"][i].bool()
            ids, labels = val.text["input_ids"][i][row], val.text["labels"][i][row]
            logp = model(val.images[i:i + 1], ids[None]).logits[0].float().log_softmax(-1)
            nll_full += [-logp[t - 1, labels[t]].item() for t in range(1, len(ids))]  # the whole objective
            for t in range(2, len(ids)):  # token t predicted at t-1; c1 (t=1) and <|endofchunk|> are not scored
                if labels[t] == -100 or labels[t] == prompts.end_id:
                    continue
                nll_all.append(-logp[t - 1, labels[t]].item())
                if labels[t].item() in objects:
                    nll_obj.append(-logp[t - 1, labels[t]].item())
    assert len(nll_obj) == len(val)  # one "cube" per caption
    assert after["val_loss"] == pytest.approx(np.mean(nll_full), abs=1e-5)
    assert after["val_caption_loss"] == pytest.approx(np.mean(nll_all), abs=1e-5)
    assert after["val_object_word_loss"] == pytest.approx(np.mean(nll_obj), abs=1e-5)
