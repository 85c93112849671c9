"""Caption a folder of images with a stage-2 run and write a COCO results file.

    python eval/caption.py --checkpoint runs/stage2 --image-dir data/scenes/val \
        --annotations data/scenes/annotations/captions_val.json --out results.json [--num-beams 3]

With --annotations, the images and their ids come from the COCO file (`images[].id`, `file_name`);
without, every image file in --image-dir is captioned and its file name is its id.
Unreadable images are skipped and counted (--strict stops instead).
"""
import argparse
import json
import sys
from pathlib import Path

from spark_vlm.captioner import caption_images, load_captioner
from spark_vlm.data.images import SkipCounter
from spark_vlm.data.readers import load_pairs

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def image_records(image_dir: Path, annotations: str | None) -> tuple[list[dict], dict]:
    """Records for `load_pairs` (a placeholder caption each) and a map from our int id to the output id."""
    if annotations:
        try:
            coco = json.loads(Path(annotations).read_text())
            images = coco["images"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            sys.exit(f"error: cannot read the images of the COCO file {annotations}: {e}")
        recs = [{"image_id": int(im["id"]), "path": str(image_dir / im["file_name"]), "captions": ["-"]}
                for im in images]
        return recs, {r["image_id"]: r["image_id"] for r in recs}
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    recs = [{"image_id": i, "path": str(p), "captions": ["-"]} for i, p in enumerate(files)]
    return recs, {i: p.name for i, p in enumerate(files)}


def main() -> None:
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
    args = parser.parse_args()

    image_dir = Path(args.image_dir)
    if not image_dir.is_dir():
        sys.exit(f"error: --image-dir {image_dir} is not a directory")
    model, prompts = load_captioner(args.checkpoint)
    records, out_ids = image_records(image_dir, args.annotations)
    records = records[: args.limit] if args.limit else records
    counter = SkipCounter(what="images")
    images, _, ids = load_pairs(records, model.vision.config.image_size, strict=args.strict, counter=counter)
    captions = caption_images(model, prompts, images, batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    results = [{"image_id": out_ids[i], "caption": c} for i, c in zip(ids, captions)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"captioned {len(results)} images -> {args.out}" + (f"; {counter.summary()}" if counter.total else ""))
    for r in results[:3]:
        print(f"  {r['image_id']}: {r['caption']}")


if __name__ == "__main__":
    main()
