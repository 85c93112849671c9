"""Does a (stand-in) LM carry the asked object to the "Answer:" position? The check behind POPE's prompt form.

    python benchmarks/question_routing.py --lm ~/.cache/spark_vlm/lms/standin-lm-gpt2-...     # probe an LM
    python benchmarks/question_routing.py --train-reading-questions 4 --steps 2400 --arch gpt2  # train one, then probe

A Flamingo captioner answers "Question: Is there a star in the image? Answer:" from the cross-attention at the
"Answer:" position, whose query is the frozen LM's state there; the LM must have put the asked object into it.
Printed per layer: the spread of that state across the 8 shapes (mean ||h - mean|| / mean ||h||, percent); with
`--train-reading-questions K` a stand-in LM is first pretrained on the captions plus K reading-comprehension texts
per enumeration caption ("{caption} Question: Is there a X in the image? Answer: yes|no", the answer read off the
shapes the caption names; `--questions-per-text 2` chains two), and its text-only QA accuracy on the val captions
(chance 50) says whether it learned to answer from context at all. JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from spark_vlm.data.cache import CACHE_ROOT
from spark_vlm.data.scene_truth import parse_caption
from spark_vlm.data.scene_vocab import SHAPES
from spark_vlm.data.scenes import cached_scenes
from spark_vlm.data.text import object_question, question_answer


def reading_texts(scenes, per_caption: int, per_text: int, seed: int) -> list[str]:
    """RC texts about each enumeration caption (it names every object, so "no" is as readable as "yes")."""
    rng, out = random.Random(seed), []
    for i in range(len(scenes)):
        meta = scenes.meta(i)
        for caption, kind in zip(meta["captions"], meta["caption_kinds"]):
            if kind != "enumeration":
                continue
            present = sorted({shape for _, shape, _, _ in parse_caption(caption, kind)[2]})  # (colour, shape, n, size)
            absent = sorted(set(SHAPES) - set(present))
            for _ in range(per_caption):
                qas = []
                for _ in range(per_text):  # each answer drawn independently: no "second answer = not first" shortcut
                    pool, answer = (present, "yes") if rng.random() < 0.5 else (absent, "no")
                    if pool:
                        qas.append(question_answer(object_question(rng.choice(pool)), answer))
                if qas:
                    out.append(" ".join([caption] + qas))
    return out


@torch.no_grad()
def probe(lm_dir: str, val_texts: list[str]) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_dir)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    yes, no = tok(" yes")["input_ids"][0], tok(" no")["input_ids"][0]

    def last(text):
        ids = torch.tensor([[tok.bos_token_id] + tok(text)["input_ids"]])
        out = lm(ids, output_hidden_states=True)
        return out.logits[0, -1], [h[0, -1] for h in out.hidden_states]

    correct = 0
    for text in val_texts:
        query, answer = text.rsplit(" ", 1)
        logits, _ = last(query)
        correct += int(bool(logits[yes] > logits[no]) == (answer == "yes"))
    states = [last(question_answer(object_question(s))) for s in SHAPES]
    spread = []
    for layer in range(len(states[0][1])):
        h = torch.stack([s[1][layer] for s in states])
        spread.append(100 * ((h - h.mean(0)).norm(dim=1).mean() / h.norm(dim=1).mean()).item())
    p_yes = [torch.softmax(s[0][[yes, no]], 0)[0].item() for s in states]
    return {"lm": lm_dir, "text_qa_accuracy": 100 * correct / max(len(val_texts), 1), "num_val_questions": len(val_texts),
            "spread_percent_per_layer": spread, "p_yes_without_caption": dict(zip(SHAPES, p_yes))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", help="a Hugging Face causal LM directory to probe")
    parser.add_argument("--train-reading-questions", type=int, default=0, help="K RC texts per enumeration caption")
    parser.add_argument("--questions-per-text", type=int, default=1)
    parser.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--cache-dir", default=str(CACHE_ROOT / "lms"), help="where the trained LM is cached")
    parser.add_argument("--out", default="benchmarks/results/question_routing.json")
    args = parser.parse_args(argv)
    if bool(args.lm) == bool(args.train_reading_questions):
        parser.error("give --lm DIR or --train-reading-questions K")
    val = cached_scenes("val", 500, 64)
    val_texts = reading_texts(val, 2, 1, seed=1)
    lm_dir = args.lm
    if not lm_dir:
        from spark_vlm.training.standin_lm import StandinLM, pretrain_standin_lm

        train = cached_scenes("train", 30000, 64)
        captions = [c for i in range(len(train)) for c in train.meta(i)["captions"]]
        texts = captions + reading_texts(train, args.train_reading_questions, args.questions_per_text, seed=0)
        print(f"{len(captions)} captions + {len(texts) - len(captions)} reading-comprehension texts", flush=True)
        lm_dir = str(pretrain_standin_lm(texts, [val.meta(i)["captions"][0] for i in range(len(val))], args.cache_dir,
                                         StandinLM(arch=args.arch, steps=args.steps)))
    result = {**probe(lm_dir, val_texts), "train_reading_questions": args.train_reading_questions,
              "questions_per_text": args.questions_per_text, "arch": args.arch, "steps": args.steps}
    print(f"text-QA accuracy {result['text_qa_accuracy']:.1f}% (chance 50) on {len(val_texts)} val questions")
    print("answer-position spread across the 8 shapes, per layer (%): "
          + " ".join(f"{s:.2f}" for s in result["spread_percent_per_layer"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
