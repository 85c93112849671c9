"""Zero-shot image-text retrieval (R@1/5/10 both ways) with a stage-1 run.

    python eval/retrieval.py --checkpoint runs/stage1 --annotations captions_val2017.json --image-dir val2017 --out retr.json
    python eval/retrieval.py --checkpoint runs/stage1 --karpathy dataset_coco.json --image-dir coco --split test --out retr.json
    python eval/retrieval.py --checkpoint runs/stage1 --out retr.json          # built-in scenes, test split

Reports the standard protocol (an image's own captions are its positives) and a duplicate-aware
variant (any caption with the same string counts), which matters for template captions such as the
built-in scenes'. Unreadable images are skipped and counted (--strict stops instead).
"""
import numpy as np

from spark_vlm.evaluation import caption_eval_inputs, write_report
from spark_vlm.metrics.retrieval import retrieval_recall
from spark_vlm.metrics.retrieval_dedup import dedup_retrieval_recall


def main(argv=None) -> dict:
    args, data, captions, texts, similarity = caption_eval_inputs(__doc__, argv)
    text_to_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    standard = retrieval_recall(similarity, text_to_image)
    dedup = dedup_retrieval_recall(similarity, texts, text_to_image)

    result = {"checkpoint": args.checkpoint, **data, "num_images": len(captions), "num_texts": len(texts),
              **standard, "dedup": dedup}
    rows = [{"protocol": name, **{f"{d} R@{k}": r[f"{key}_R@{k}"] for d, key in
                                  (("i→t", "image_to_text"), ("t→i", "text_to_image")) for k in (1, 5, 10)}}
            for name, r in (("standard", standard), ("duplicate-aware", dedup))]
    write_report(args.out, result, "Zero-shot retrieval", rows)
    return result


if __name__ == "__main__":
    main()
