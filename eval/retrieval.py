"""Zero-shot image-text retrieval (R@1/5/10 both ways) with a stage-1 run.

    python eval/retrieval.py --checkpoint runs/stage1 --annotations captions_val2017.json --image-dir val2017 --out retr.json
    python eval/retrieval.py --checkpoint runs/stage1 --karpathy dataset_coco.json --image-dir coco --split test --out retr.json
    python eval/retrieval.py --checkpoint runs/stage1 --out retr.json          # built-in scenes, test split

Reports the standard protocol (an image's own captions are its positives) and a duplicate-aware
variant (any caption with the same string counts), which matters for template captions such as the
built-in scenes'. Unreadable images are skipped and counted (--strict stops instead).
"""
import argparse
import sys

import numpy as np

from spark_vlm.evaluation import (add_caption_data_args, encode_images, encode_texts, load_caption_data,
                                  load_checkpoint, write_report)
from spark_vlm.metrics.retrieval import retrieval_recall
from spark_vlm.metrics.retrieval_dedup import dedup_retrieval_recall


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--batch-size", type=int, default=64)
    add_caption_data_args(parser)
    args = parser.parse_args(argv)

    try:
        model, tok = load_checkpoint(args.checkpoint)
        images, captions, _, data = load_caption_data(args, model.config.image_size)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    texts = [c for caps in captions for c in caps]
    text_to_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])

    similarity = encode_images(model, images, args.batch_size) @ encode_texts(model, tok, texts).t()
    standard = retrieval_recall(similarity, text_to_image)
    dedup = dedup_retrieval_recall(similarity, texts, text_to_image)

    result = {"checkpoint": args.checkpoint, **data, "num_images": len(images), "num_texts": len(texts),
              **standard, "dedup": dedup}
    rows = [{"protocol": name, **{f"{d} R@{k}": r[f"{key}_R@{k}"] for d, key in
                                  (("i→t", "image_to_text"), ("t→i", "text_to_image")) for k in (1, 5, 10)}}
            for name, r in (("standard", standard), ("duplicate-aware", dedup))]
    write_report(args.out, result, "Zero-shot retrieval", rows)
    return result


if __name__ == "__main__":
    main()
