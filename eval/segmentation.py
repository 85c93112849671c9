"""Zero-shot semantic segmentation (mIoU) with a stage-1 run: the SPARC paper's protocol and the standard one.

    python eval/segmentation.py --checkpoint runs/stage1 --voc-root VOCdevkit/VOC2012 --out seg.json \
        [--split val] [--class-names aeroplane,bicycle,...] [--templates clip7 | imagenet80 | "a {}." ...]
    python eval/segmentation.py --checkpoint runs/stage1 --out seg.json     # built-in scenes, test split

Each patch's dense embedding (h_v then g_v) is compared with the class prompt embeddings; each patch
takes its argmax class and the patch labels are upsampled (nearest) to the mask. Two labelled protocols:
paper_protocol (the SPARC paper: candidates = the foreground classes present in the image, ground-truth
background pixels ignored, mIoU over the foreground classes; also over images with >= 2 foreground
classes) and standard_protocol (candidates = all classes + a "background" prompt, all pixels, mIoU over
all classes incl. background).

VOC images are resized and center-cropped to the model's input (the CLIP preprocessing), so the
prediction is compared with the center square of the mask, at the mask's own resolution. Built-in
scene masks: class index = SHAPES index + 1, 0 = background. Mask indices 1..N name --class-names.
The protocol: spark_vlm/evaluation/segmentation.py.
"""
import argparse

from spark_vlm.data.images import BadSample
from spark_vlm.evaluation.report import error_line, write_report
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
    parser.add_argument("--templates", nargs="+", help="a bundled set (clip7, imagenet80) or prompt templates "
                                                       "with {} (default: clip7 for VOC, the scene phrasings "
                                                       "for the built-in scenes)")
    parser.add_argument("--num-images", type=int, default=500, help="built-in scenes only (default 500)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    args = parser.parse_args(argv)

    try:
        class_names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
        report = segmentation_report(args.checkpoint, args.voc_root, args.split, class_names, args.templates,
                                     args.num_images, args.batch_size, args.strict)
    except (OSError, ValueError, BadSample) as e:
        parser.exit(2, error_line(e))
    write_report(report, args.out)
    return report.result


if __name__ == "__main__":
    main()
