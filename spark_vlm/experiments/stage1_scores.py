"""Every held-out score of one stage-1 run on the built-in test scenes, as one flat dict: grounding (all words,
beside the uniform / position-only / blank-image / any-object readouts, and centred), the alignment shortcut diagnostics,
retrieval (both directions, and truth-aware: any image the caption is true of), the probes beside a blank image's,
zero-shot segmentation mIoU (both protocols) and K-Precision. One definition for the grounding sweep and the study."""
from __future__ import annotations

BASELINES = ("uniform", "position_only", "blank_image", "any_object")


def stage1_scores(run_dir, num_images: int) -> dict[str, float]:
    from ..evaluation.data import CaptionData
    from ..evaluation.grounding import grounding_report
    from ..evaluation.probes import probes_report
    from ..evaluation.retrieval import kprecision_report, retrieval_report
    from ..evaluation.segmentation import segmentation_report

    run_dir = str(run_dir)
    grounding = grounding_report(run_dir, num_images).result
    retrieval = retrieval_report(run_dir, CaptionData(num_images=num_images)).result
    probes = probes_report(run_dir, num_images=num_images).result
    segmentation = segmentation_report(run_dir, num_images=num_images).result
    kprecision = kprecision_report(run_dir, CaptionData(num_images=num_images)).result
    words = grounding["all"]
    truth = retrieval["by_kind"]["all"]
    return {"num_images": num_images, "words": words["words"],
            **{f"{who}.{measure}": words[f"{who}.{measure}"] for who in ("model", "model_centred", *BASELINES)
               for measure in ("mass_in_mask", "pointing")},
            **grounding["shortcut"],
            "t2i_R@1": retrieval["text_to_image_R@1"], "i2t_R@1": retrieval["image_to_text_R@1"],
            "truth_R@1": truth["truth_R@1"], "truth_R@1_chance": truth["truth_R@1_chance"],
            "i2t_truth_R@1": truth["i2t_truth_R@1"],
            "probes": probes["mean_accuracy"], "probes.blank_image": probes["blank_image_mean_accuracy"],
            "mIoU.paper": segmentation["paper_protocol"]["mIoU"],
            "mIoU.standard": segmentation["standard_protocol"]["mIoU"],
            "K-P": kprecision["K-P"], "K-Pna": kprecision["K-Pna"]}
