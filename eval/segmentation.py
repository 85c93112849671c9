"""Zero-shot semantic segmentation (mIoU) with a stage-1 run, as in the SPARC paper.

    python eval/segmentation.py --checkpoint runs/stage1 --voc-root VOCdevkit/VOC2012 --out seg.json \
        [--split val] [--class-names aeroplane,bicycle,...] [--templates ...]
    python eval/segmentation.py --checkpoint runs/stage1 --out seg.json     # built-in scenes, test split

Each patch's dense embedding (h_v then g_v) is compared with the prompt embeddings of the classes
present in the image's mask; the argmax per patch, upsampled (bilinear on the scores) to the mask,
is the prediction. mIoU over the foreground classes present, from one confusion matrix over the set.
Also reported: the same over images with >= 2 foreground classes (with one class the argmax is
trivially right on the object), and with ground-truth background pixels ignored.

VOC images are resized and center-cropped to the model's input (the CLIP preprocessing), so the
prediction is compared with the center square of the mask, at the mask's own resolution. Built-in
scene masks: class index = SHAPES index + 1, 0 = background. Mask indices 1..N name --class-names.
The protocol: spark_vlm/evaluation/segmentation.py.
"""
import argparse

from spark_vlm.data.images import BadSample
from spark_vlm.evaluation.report import write_report
from spark_vlm.evaluation.segmentation import segmentation_report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--voc-root", help="VOC tree with JPEGImages, SegmentationClass, ImageSets "
                                           "(default: the built-in scenes)")
    parser.add_argument("--split", default="val", help="VOC split file (default: val)")
    parser.add_argument("--class-names", help="comma-separated names of mask indices 1..N "
                                              "(default: the 20 VOC classes)")
    parser.add_argument("--templates", nargs="+", help="prompt templates with {} (default: CLIP's 7 for VOC, "
                                                       "scene phrasings for the built-in scenes)")
    parser.add_argument("--num-images", type=int, default=500, help="built-in scenes only (default 500)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    args = parser.parse_args(argv)

    try:
        class_names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
        report = segmentation_report(args.checkpoint, args.voc_root, args.split, class_names, args.templates,
                                     args.num_images, args.batch_size, args.strict)
    except (OSError, ValueError, BadSample) as e:
        parser.exit(2, f"error: {e}\n")
    write_report(report, args.out)
    return report.result


if __name__ == "__main__":
    main()
