"""Caption a folder of images with a stage-2 run and write a COCO results file.

    python eval/caption.py --checkpoint runs/stage2 --image-dir data/scenes/val \
        --annotations data/scenes/annotations/captions_val.json --out results.json [--num-beams 3]

With --annotations, the images and their ids come from the COCO file (`images[].id`, `file_name`);
without, every image file in --image-dir is captioned and its file name is its id.
Unreadable images are skipped and counted (--strict stops instead).
The frozen parts are read from the paths in the run's manifest.json; --vision-checkpoint / --lm-path say where
they are now if the run moved (a different backbone is refused: its sha256 must be the manifest's).
The output is the input of eval/captioning.py and eval/hallucination.py, not a report.

The prompt is `<image>`, what training used. --shots N asks few-shot instead, in open_flamingo's captioning format:
N examples `<image>Output: {caption}<|endofchunk|>`, then `<image>Output:` for the query (the answer is cut at a
further "Output", as open_flamingo does). The examples are other images of the --shots-from COCO captions file
(default: --annotations; file names under --image-dir, or absolute), drawn with --seed, never the query image,
one of its captions each. Beside a few-shot score, score its blind control (eval/captioning.py --blind-seed).
"""
import argparse
import json
from pathlib import Path

from spark_vlm.data.images import BadSample
from spark_vlm.evaluation.captioner import DEVICES, caption_folder
from spark_vlm.evaluation.report import error_line


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-2 run directory")
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--annotations", help="COCO-format file naming the images (and their ids)")
    parser.add_argument("--out", required=True, help="COCO results JSON to write")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--limit", type=int, help="caption only the first N images")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    parser.add_argument("--shots", type=int, default=0, help="few-shot examples before each image (0: zero-shot)")
    parser.add_argument("--shots-from", help="COCO captions file to draw the examples from (default: --annotations)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the few-shot draw")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda if available, else cpu")
    parser.add_argument("--vision-checkpoint", help="where the run's stage-1 directory is now (the manifest's "
                        "path is used otherwise; the weights must hash to what the run was trained on)")
    parser.add_argument("--lm-path", help="where the run's frozen LM is now (hash-checked the same way)")
    args = parser.parse_args(argv)
    try:
        results, skipped = caption_folder(args.checkpoint, args.image_dir, args.annotations, args.limit,
                                          args.batch_size, args.strict, args.device, args.vision_checkpoint,
                                          args.lm_path, args.shots, args.shots_from, args.seed,
                                          max_new_tokens=args.max_new_tokens,
                                          num_beams=args.num_beams)
    except (OSError, ValueError, BadSample) as e:
        parser.exit(2, error_line(e))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"captioned {len(results)} images -> {args.out}" + (f"; {skipped.summary()}" if skipped.total else ""))
    for r in results[:3]:
        print(f"  {r['image_id']}: {r['caption']}")
    return results


if __name__ == "__main__":
    main()
