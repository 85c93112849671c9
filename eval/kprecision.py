"""Faithfulness of the top-1 retrieved caption (K-Precision, as in SPARC) with a stage-1 run.

    python eval/kprecision.py --checkpoint runs/stage1 --annotations captions_val2017.json --image-dir val2017 --out kp.json
    python eval/kprecision.py --checkpoint runs/stage1 --out kp.json          # built-in scenes, test split

For each image the best caption among all captions of the set is retrieved by global similarity;
K-P is the share of its words found in the image's reference captions, K-Pna the same over its nouns
and adjectives (word lists, not a tagger: see spark_vlm/metrics/kprecision.py). Percent, averaged
over images. Unreadable images are skipped and counted (--strict stops instead).
"""
from spark_vlm.evaluation import caption_eval_inputs, write_report
from spark_vlm.metrics.kprecision import k_precision


def main(argv=None) -> dict:
    args, data, captions, texts, similarity = caption_eval_inputs(__doc__, argv)
    top1 = similarity.argmax(dim=1).tolist()  # ties -> the first caption: deterministic
    retrieved = [texts[j] for j in top1]
    scores = k_precision(retrieved, captions)

    result = {"checkpoint": args.checkpoint, **data, "num_texts": len(texts), **scores,
              "examples": [{"retrieved": r, "references": c} for r, c in zip(retrieved[:5], captions[:5])]}
    write_report(args.out, result, "K-Precision of the top-1 retrieved caption")
    return result


if __name__ == "__main__":
    main()
