"""Evaluation metrics against values worked out by hand: segmentation mIoU, zero-shot classification,
template ensembling, duplicate-aware retrieval and K-Precision."""
import math

import numpy as np
import pytest
import torch

from spark_vlm.metrics.classification import classification_metrics, zero_shot_classifier
from spark_vlm.metrics.kprecision import is_noun_or_adjective, k_precision, tokens, word_class
from spark_vlm.metrics.retrieval import retrieval_recall
from spark_vlm.metrics.retrieval_dedup import dedup_retrieval_recall
from spark_vlm.metrics.segmentation import confusion_matrix, miou, miou_from_confusion, segment_patches


# ------------------------------------------------------------------------------------------ segmentation
GT = np.array([[0, 1, 1, 255],
               [0, 2, 2, 2]])
PRED = np.array([[1, 1, 1, 3],
                 [0, 2, 1, 2]])


def test_miou_by_hand_with_ignore_and_absent_class():
    # The 255 pixel is dropped, so class 3 (predicted only there) is absent from both maps: no IoU.
    # class 0: TP 1, FN 1 -> 50 (not in the mean); class 1: TP 2, FP 2 ((0,0) and (1,2)) -> 2/4 = 50
    # class 2: TP 2, FN 1 ((1,2)) -> 2/3; mIoU = (50 + 66.67) / 2
    out = miou(PRED, GT, num_classes=4)
    assert out["per_class_iou"][0] == pytest.approx(50.0)
    assert out["per_class_iou"][1] == pytest.approx(50.0)
    assert out["per_class_iou"][2] == pytest.approx(200 / 3)
    assert out["per_class_iou"][3] is None
    assert out["miou"] == pytest.approx((50 + 200 / 3) / 2) and out["num_classes_counted"] == 2
    conf = confusion_matrix(PRED, GT, 4)
    assert conf.sum() == 7 and conf[0, 1] == 1 and conf[2, 1] == 1  # rows = ground truth
    assert miou_from_confusion(conf, background=None)["miou"] == pytest.approx((50 + 50 + 200 / 3) / 3)


def test_miou_pools_pixels_over_images():
    # Two images pooled: class 1 has TP 1 + 0 and union 1 + 1 -> 50, not the mean of per-image IoUs (100, 0).
    a_gt, a_pred = np.array([[1, 0]]), np.array([[1, 0]])
    b_gt, b_pred = np.array([[0, 0]]), np.array([[1, 0]])
    assert miou([a_pred, b_pred], [a_gt, b_gt], num_classes=2)["miou"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([5]), np.array([1]), 4)


def test_segment_patches_argmax_per_patch_then_nearest():
    # 2x2 patch grid, two candidate classes with ids 3 and 7: patch (0,0) and (1,1) prefer class 3.
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    expected = np.array([[3, 3, 7, 7], [3, 3, 7, 7], [7, 7, 3, 3], [7, 7, 3, 3]])
    labels = segment_patches(scores, (2, 2), (4, 4), [3, 7])
    assert (labels == expected).all() and labels.dtype == np.int64
    # A weak patch beside a confident one keeps its whole area: argmax first, then upsample. (Bilinear
    # upsampling of the scores would give pixel 1 the mix 0.75 * [.6, .4] + 0.25 * [0, 1] = [.45, .55] -> 7.)
    assert segment_patches([[0.6, 0.4], [0.0, 1.0]], (1, 2), (1, 4), [3, 7]).tolist() == [[3, 3, 7, 7]]
    # A tie goes to the first candidate.
    assert segment_patches([[0.5, 0.5]], (1, 1), (2, 2), [3, 7]).tolist() == [[3, 3], [3, 3]]
    with pytest.raises(ValueError):
        segment_patches(scores, (2, 3), (4, 4), [3, 7])


def test_segment_patches_matches_a_per_pixel_loop():
    """Uneven sizes (a 3x4 grid onto 7x10 and 3x3 pixels) against the obvious loop over pixels."""
    rng = np.random.default_rng(0)
    for out_hw in ((7, 10), (3, 3), (12, 4)):
        scores = rng.normal(size=(12, 5))
        ids = [0, 4, 9, 11, 20]
        got = segment_patches(scores, (3, 4), out_hw, ids)
        h, w = out_hw
        for y in range(h):
            for x in range(w):
                patch = int(np.floor(y * 3 / h)) * 4 + int(np.floor(x * 4 / w))
                assert got[y, x] == ids[int(np.argmax(scores[patch]))]


# ------------------------------------------------------------------------------------------ classification
def test_classification_top1_top5_and_per_class_recall():
    labels = [0, 1, 2, 2]
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # true 0 is best: top-1 hit
        [0.5, 0.2, 0.3, 0.4, 0.6, 0.1],   # true 1 ranks 5th (4 classes above): top-5 hit only
        [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],   # all tied: pessimistic rank 6 -> miss at top-1 and top-5
        [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],   # true 2 is best
    ])
    out = classification_metrics(logits, labels, ks=(1, 5))
    assert out["acc@1"] == pytest.approx(50.0) and out["acc@5"] == pytest.approx(75.0)
    # per class: class 0 100, class 1 0, class 2 1/2; classes 3-5 have no samples and are left out
    assert out["per_class_recall"][:3] == pytest.approx([100.0, 0.0, 50.0])
    assert out["per_class_recall"][3:] == [None, None, None]
    assert out["mean_per_class_recall"] == pytest.approx(50.0) and out["num_samples"] == 4


def test_zero_shot_classifier_normalises_templates_before_averaging():
    # class 0: templates (3, 4) and (0, 1) -> unit (0.6, 0.8) and (0, 1) -> mean (0.3, 0.9) -> renormalised
    emb = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[2.0, 0.0], [5.0, 0.0]]])
    clf = zero_shot_classifier(emb)
    assert clf[0].tolist() == pytest.approx([0.3 / math.sqrt(0.9), 0.9 / math.sqrt(0.9)])
    assert clf[1].tolist() == pytest.approx([1.0, 0.0])
    scaled = emb.clone()
    scaled[0, 0] *= 10  # a template's norm must not change the class vector
    assert torch.allclose(zero_shot_classifier(scaled), clf)
    assert torch.allclose(zero_shot_classifier(emb[:, 0]), torch.tensor([[0.6, 0.8], [1.0, 0.0]]))


# ------------------------------------------------------------------------------------------ retrieval
CAPTIONS = ["a red circle", "two shapes", "A red  circle", "a blue square"]  # texts 0 and 2 are the same string
TEXT_TO_IMAGE = [0, 0, 1, 2]
SIM = torch.tensor([[0.9, 0.1, 0.6, 0.3],
                    [0.8, 0.0, 0.5, 0.1],
                    [0.1, 0.2, 0.3, 0.4]])


def test_dedup_retrieval_by_hand():
    std = retrieval_recall(SIM, TEXT_TO_IMAGE)
    dedup = dedup_retrieval_recall(SIM, CAPTIONS, TEXT_TO_IMAGE)
    # i->t: image 1's best text is text 0, image 0's copy of its own caption: a miss only in the standard protocol
    assert std["image_to_text_R@1"] == pytest.approx(200 / 3) and dedup["image_to_text_R@1"] == pytest.approx(100.0)
    # t->i: text 1 (image 0) prefers image 2 in both; text 2 prefers image 0, which also says "a red circle"
    assert std["text_to_image_R@1"] == pytest.approx(50.0) and dedup["text_to_image_R@1"] == pytest.approx(75.0)
    assert dedup["R@5"] == pytest.approx(100.0) and dedup["num_duplicate_texts"] == 2
    # Without duplicate strings the two protocols agree exactly, also in small chunks.
    unique = ["t0", "t1", "t2", "t3"]
    assert dedup_retrieval_recall(SIM, unique, TEXT_TO_IMAGE, chunk=1) == {**std, "num_duplicate_texts": 0}


# ------------------------------------------------------------------------------------------ K-Precision
def test_k_precision_worked_example():
    # Image A. Retrieved "Two red circles and a blue square." -> tokens (articles and punctuation dropped):
    #   two red circles and blue square                                      (6 tokens)
    # Knowledge = references joined: two red circles green square on plain background
    #   K-P: two, red, circles, square are supported -> 4/6
    #   nouns/adjectives: red (adj), circles (noun), blue (adj), square (noun) -> 3 of 4 supported -> 3/4
    # Image B. Retrieved "a dog sitting on the grass" -> dog sitting on grass; knowledge: dog lying on lawn
    #   K-P: dog, on -> 2/4;  nouns/adjectives: dog, grass ("sitting" is a verb, "on" a preposition) -> 1/2
    retrieved = ["Two red circles and a blue square.", "a dog sitting on the grass"]
    references = [["two red circles", "a green square on a plain background"], ["a dog lying on a lawn"]]
    out = k_precision(retrieved, references)
    assert out["K-P"] == pytest.approx(100 * (4 / 6 + 2 / 4) / 2)
    assert out["K-Pna"] == pytest.approx(100 * (3 / 4 + 1 / 2) / 2)
    assert out["num_images"] == 2 and out["num_images_kpna"] == 2


def test_k_precision_counts_repeats_and_empty_captions():
    # "red" twice in the prediction but once in the knowledge: supported once -> 2 of 3 tokens
    assert k_precision(["red red circle"], [["a red circle"]])["K-P"] == pytest.approx(200 / 3)
    out = k_precision(["", "the"], [["a red circle"], ["a red circle"]])  # no tokens: 0, and no K-Pna
    assert out["K-P"] == 0.0 and out["num_images_kpna"] == 0 and math.isnan(out["K-Pna"])


def test_word_classes():
    assert tokens("An Orange ring, left of the box!") == ["orange", "ring", "left", "of", "box"]
    assert word_class("ring") == "noun" and word_class("little") == "adjective"   # scene list beats "-ing"
    assert word_class("standing") == "verb" and word_class("building") == "noun_or_adjective"
    assert not is_noun_or_adjective("three") and not is_noun_or_adjective("above")
    assert is_noun_or_adjective("giraffe") and is_noun_or_adjective("wooden")
