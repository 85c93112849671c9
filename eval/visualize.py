"""Show where each caption token looks: SPARK's sparse token-to-patch alignment weights as heatmaps.

    python eval/visualize.py --checkpoint runs/stage1 --image photo.jpg --caption "two red circles" --out heatmap.png
    python eval/visualize.py --checkpoint runs/stage1 --scene-index 3 --out heatmap.png   # a built-in test scene

The figure shows the image, then one panel per caption token (its tokenizer piece as the title): the
token's alignment weights a_lp from `sparc_alignment` (min-max normalised similarities, sparsified at
1/P, L1-renormalised) over the patch grid, upsampled bilinearly and laid over the image. With
--scene-index and no --caption, the scene's first true caption is used. The maps: spark_vlm/evaluation/alignment.py.
"""
import argparse
import math

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from spark_vlm.data.images import BadSample, load_image  # noqa: E402
from spark_vlm.data.scenes import SceneConfig, generate_scene  # noqa: E402
from spark_vlm.evaluation.alignment import alignment_maps, draw_overlay  # noqa: E402
from spark_vlm.evaluation.stage1_run import load_stage1_run  # noqa: E402
from spark_vlm.evaluation.report import error_line  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image file")
    source.add_argument("--scene-index", type=int, help="a built-in test scene")
    parser.add_argument("--caption", help="the caption to align (required with --image)")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if args.image and args.caption is None:  # an empty caption is bad input: one `error:` line below
        parser.error("--caption is required with --image")

    try:
        model, tok = load_stage1_run(args.checkpoint)
        size = model.config.image_size
        if args.image:
            image, caption = load_image(args.image, size), args.caption
        else:
            scene = generate_scene(SceneConfig(image_size=size), "test", args.scene_index)
            image, caption = scene["image"], args.caption or scene["captions"][0]
    except (OSError, ValueError, BadSample) as e:
        parser.exit(2, error_line(e))
    maps, names = alignment_maps(model, tok, image, caption)
    if not names:
        parser.exit(2, f"error: the caption {caption!r} has no tokens\n")

    cols = min(6, len(names) + 1)
    rows = math.ceil((len(names) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("image", fontsize=9)
    for ax, name, heat in zip(axes.flat[1:], names, maps):
        draw_overlay(ax, image, heat, name)
    fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"wrote {args.out} ({len(names)} tokens of {caption!r})")


if __name__ == "__main__":
    main()
