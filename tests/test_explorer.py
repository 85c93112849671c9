"""The explorer (spark_vlm/explorer): the session functions on a tiny stage-1/stage-2 pair and an oracle pair, and
the HTTP endpoints through Starlette's TestClient: captions with per-word overlays, CHAIR marks that agree with
metrics/chair.py, SPARK maps, POPE answers, and one clear message (never a traceback) for every bad upload."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

from spark_vlm.data.oracle_tokens import OBJECT_TOKEN_DIM
from spark_vlm.data.scene_vocab import PLURALS
from spark_vlm.data.scenes import SceneConfig, generate_scene
from spark_vlm.explorer import session
from spark_vlm.explorer.__main__ import main as explorer_main
from spark_vlm.explorer.session import Picture, RunPair
from spark_vlm.metrics.chair import compute_chair
from spark_vlm.models.flamingo import FlamingoConfig, SparkFlamingo
from spark_vlm.models.oracle_vision import OracleVision, OracleVisionConfig
from test_eval_cli import tiny_stage1_run
from test_flamingo import make_tokenizer, set_gates, single_thread  # noqa: F401 (autouse fixture)

TINY = dict(num_latents=4, resampler_depth=1, resampler_heads=2, resampler_dim_head=8, xattn_heads=2,
            xattn_dim_head=8, ff_mult=2)


def word_tokenizer(captions: list[str]) -> PreTrainedTokenizerFast:
    """One token per word of the scene captions: a random LM then writes (random) sentences of scene words."""
    words = sorted({w for c in captions for w in c.replace(".", " .").split()} | set(PLURALS) | set(PLURALS.values()))
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(cleanup=True)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]")


def build_runs(root) -> dict[str, str]:
    """A tiny random stage-1 run (32 px scenes, a 4x4 patch grid), a stage-2 run on it and a stage-2 run on the
    oracle tower, written as the trainers write them, with a word-level LM. Returns their directories."""
    runs = {"stage1": tiny_stage1_run(root)}
    OracleVision(OracleVisionConfig(image_size=32)).save_pretrained(root / "oracle")
    lm_tokenizer = word_tokenizer([c for i in range(30) for c in generate_scene(SceneConfig(image_size=32), "train", i)["captions"]])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(lm_tokenizer), n_embd=32, n_layer=2, n_head=2,
                                                n_positions=64, bos_token_id=0, eos_token_id=0,
                                                initializer_range=0.2)).save_pretrained(root / "lm")
    lm_tokenizer.save_pretrained(root / "lm")
    for name, vision, width in (("stage2", runs["stage1"], 32), ("oracle2", root / "oracle", OBJECT_TOKEN_DIM)):
        torch.manual_seed(3)
        model = SparkFlamingo.from_pretrained_parts(FlamingoConfig(vision_width=width, **TINY),
                                                    str(vision), str(root / "lm"))
        set_gates(model, 0.8)  # open gates: the image changes the words
        runs[name] = model.save_pretrained(str(root / name))
    return runs


@pytest.fixture(scope="module")
def pairs(explorer_runs):
    runs = explorer_runs  # conftest.py: build_runs, once per session
    return RunPair(runs["stage1"], runs["stage2"]), RunPair(runs["stage1"], runs["oracle2"])


def png_bytes(size=(20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def decoded(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_caption_gives_each_word_its_own_overlay_and_chair_marks_agree_with_the_metric(pairs):
    pair = pairs[0]
    result = session.caption(pair, Picture.of_scene(3))
    assert result["caption"] and " ".join(w["text"] for w in result["words"]).split() == result["caption"].split()
    overlays = [decoded(w["overlay"]) for w in result["words"]]
    assert all(o.shape == (256, 256, 3) for o in overlays)
    assert len({o.tobytes() for o in overlays}) > 1  # different words looked at different places
    scene = generate_scene(SceneConfig(image_size=32), "test", 3)
    present = session.scene_objects(scene)
    assert present >= {o["shape"] for o in scene["objects"]}
    expected = compute_chair([{"image_id": 0, "caption": result["caption"]}], {0: present}, session.SCENE_VOCAB)
    marked = [[w["text"], w["object"]] for w in result["words"] if w["hallucinated"]]
    assert len(marked) == len(result["chair"]["hallucinated"]) == expected["num_hallucinated_mentions"]
    assert result["chair"]["CHAIRs"] == expected["CHAIRs"]


def test_chair_marks_on_a_hand_written_caption(pairs, monkeypatch):
    """Force the caption: the words naming an absent shape (synonyms and plurals included) are marked."""
    scene = generate_scene(SceneConfig(image_size=32), "test", 3)
    there = scene["objects"][0]["shape"]
    absent = next(s for s in ("ring", "star") if s not in session.scene_objects(scene))
    pair = pairs[0]
    text = f"two {PLURALS[there]} and a {absent}"
    ids = pair.prompts.caption_ids(text) + [pair.prompts.end_id]
    monkeypatch.setattr(pair.captioner, "generate", lambda *a, **k: torch.tensor([ids]))
    words = session.caption(pair, Picture.of_scene(3))["words"]
    marks = {w["text"]: w["hallucinated"] for w in words}
    assert marks == {"two": None, PLURALS[there]: False, "and": None, "a": None, absent: True}


def test_words_group_byte_level_tokens_into_the_written_words():
    tokenizer = make_tokenizer()  # byte-level BPE, as GPT-2's
    text = "two green cylinders behind a small yellow cube"
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # some words are several tokens
    groups = session._words(tokenizer, ids)
    assert [tokenizer.decode([ids[i] for i in g]).strip() for g in groups] == text.split()


def test_decoding_options_and_their_errors(pairs):
    pair, picture = pairs[0], Picture.of_scene(1)
    beam = session.caption(pair, picture, {"mode": "beam", "num_beams": 3, "max_new_tokens": 5})
    sampled = [session.caption(pair, picture, {"mode": "sample", "seed": 5, "temperature": 1.5,
                                               "max_new_tokens": 5})["caption"]
               for _ in range(2)]
    assert beam["caption"] and sampled[0] == sampled[1]  # seeded
    for bad, message in (({"mode": "nucleus"}, "decoding mode"), ({"mode": "beam", "num_beams": 50}, "num_beams"),
                         ({"max_new_tokens": "ten"}, "max_new_tokens")):
        with pytest.raises(ValueError, match=message):
            session.caption(pair, picture, bad)


def test_the_oracle_pair_draws_boxes_and_refuses_uploads(pairs):
    oracle = pairs[1]
    assert oracle.oracle and not pairs[0].oracle
    result = session.caption(oracle, Picture.of_scene(3), {"max_new_tokens": 5})
    assert "object token" in result["attribution"] and result["words"]
    with pytest.raises(ValueError, match="oracle run reads a built-in scene"):
        session.caption(oracle, Picture.of_upload(png_bytes()))


def test_align_and_pope(pairs):
    tokens = session.align(pairs[0], Picture.of_scene(2), "a red circle")
    assert [t["token"] for t in tokens] and all(decoded(t["overlay"]).shape == (256, 256, 3) for t in tokens)
    with pytest.raises(ValueError, match="type a caption"):
        session.align(pairs[0], Picture.of_scene(2), "  ")
    scene = generate_scene(SceneConfig(image_size=32), "test", 2)
    shape = scene["objects"][0]["shape"]
    for pair in pairs:
        answer = session.pope(pair, Picture.of_scene(2), shape)
        assert answer["answer"] in ("yes", "no") and answer["truth"] == "yes"
    assert session.pope(pairs[0], Picture.of_upload(png_bytes()), "ring")["truth"] is None
    with pytest.raises(ValueError, match="object must be one of"):
        session.pope(pairs[0], Picture.of_scene(2), "unicorn")


def bad_uploads() -> dict[str, tuple[bytes, str]]:
    png = png_bytes()
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    huge = io.BytesIO()
    Image.new("1", (8000, 8000)).save(huge, "PNG")  # 64 MP, a few kB on disk
    return {"zero bytes": (b"", "empty"), "not an image": (b"hello, world" * 10, "not an image"),
            "truncated": (png[:len(png) // 2], "cannot be used: truncated"),
            "gif": (gif.getvalue(), "upload a PNG or JPEG"), "huge": (huge.getvalue(), "8000x8000 pixels")}


def test_the_http_api(pairs):
    from starlette.testclient import TestClient

    from spark_vlm.explorer.server import create_app

    client = TestClient(create_app(list(pairs)), raise_server_exceptions=False)
    page = client.get("/")
    assert page.status_code == 200 and "/app.js" in page.text and "http" not in page.text.replace("http://", "")
    assert client.get("/app.js").status_code == 200
    info = client.get("/api/info").json()
    assert len(info["pairs"]) == 2 and info["pairs"][1]["oracle"] and "ring" in info["objects"]
    short = {"max_new_tokens": 4}
    good = client.post("/api/caption", json={"scene": "random", "decoding": short}).json()
    assert 0 <= good["scene"] < session.NUM_SCENES and len(good["pairs"]) == 2
    assert all(p["caption"] for p in good["pairs"])
    upload = base64.b64encode(png_bytes()).decode()
    mixed = client.post("/api/caption", json={"upload": upload, "decoding": short}).json()
    assert mixed["pairs"][0]["words"] and "oracle run" in mixed["pairs"][1]["error"] and "truth" not in mixed
    for name, (data, message) in bad_uploads().items():
        response = client.post("/api/caption", json={"upload": base64.b64encode(data).decode()})
        assert response.status_code == 400 and message in response.json()["error"], name
    for path, body, message in (("caption", {"upload": "@@@"}, "not valid base64"),
                                ("caption", {"scene": 10**6}, "scene must be"), ("caption", {}, "choose a scene"),
                                ("caption", [1, 2], "JSON object"),
                                ("caption", {"scene": 1, "decoding": {"mode": "x"}}, "decoding mode"),
                                ("align", {"scene": 1, "caption": " "}, "type a caption"),
                                ("pope", {"scene": 1}, "object must be")):
        response = client.post(f"/api/{path}", json=body)
        assert response.status_code == 400 and message in response.json()["error"], body
    assert client.post("/api/caption", content=b"{not json").json()["error"] == "the request body is not JSON"
    assert client.post("/api/pope", json={"scene": 1, "object": "ring"}).json()["pairs"][0]["answer"] in ("yes", "no")
    assert client.post("/api/align", json={"scene": 1, "caption": "a ring"}).json()["pairs"][0]["tokens"]


def test_the_command_line_refuses_a_missing_run_in_one_line(tmp_path, capsys, explorer_runs):
    with pytest.raises(SystemExit) as exit_info:
        explorer_main(["--stage1", str(tmp_path / "nope"), "--stage2", explorer_runs["stage2"]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a stage-1 run" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        explorer_main(["--compare-stage1", explorer_runs["stage1"]])
    assert exit_info.value.code == 2 and "go together" in capsys.readouterr().err
