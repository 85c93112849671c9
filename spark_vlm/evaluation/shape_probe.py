"""Does a frozen image encoder see *which shape* an object is? Linear probes on the patch features f_v(x) that
stage 2 reads, with the built-in scenes' masks as ground truth.

Why: a captioner can only name what its visual tokens encode. Stage 2 on the oracle tower (one token per object)
names shapes almost perfectly, while on every trained 400-step backbone its shape words gained nothing from the
image; this probe measures the backbone side of that directly.

Per object: the mean feature of the patches its visible mask covers at least half of (its best-covered patch
when none is), classified into the 8 shapes (chance 12.5) and, as the positive control, into the 8 colours
(chance 12.5): a backbone that learned colour but not shape shows high colour and chance shape accuracy. Per
image: the mean patch feature -> "is a <shape> present?", one balanced binary probe per shape (chance 50).
Each probe is multinomial logistic regression (L-BFGS, L2 penalty, standardised features), trained on the train
split's scenes and scored on the test split's. Controls: raw 8x8-pixel patches (no encoder) and a random-init
encoder of the same architecture (what the architecture gives without training).

Beside the probes, a global read-out: does the image embedding prefer a true caption to its shape-swapped twin
(`data/hard_negatives.py`: one shape word swapped, checked false of the scene)? Chance 50; a mid-grey image in
place of the scene is the text-only control. High swap accuracy with chance-level shape probes means the swaps
are won by image-level cues (e.g. how much of a colour the scene holds), not by seeing the objects' shapes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.hard_negatives import scene_negatives
from ..data.scene_vocab import COLORS, SHAPES
from ..data.scenes import SceneConfig
from ..metrics.grounding import patch_coverage
from .data import builtin_scenes, scene_images
from .report import Report
from .stage1_run import image_embeddings, iter_pixel_batches, load_stage1_run, text_embeddings


def fit_linear_probe(x: np.ndarray, y: np.ndarray, classes: int, balanced: bool = False, l2: float = 1e-3):
    """Multinomial logistic regression on standardised features; returns `predict(x) -> labels`. Deterministic
    (zero init, full-batch L-BFGS). `balanced` weighs each class by the inverse of its frequency."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = torch.tensor((x - mu) / sd, dtype=torch.float32)
    ys = torch.tensor(y, dtype=torch.long)
    weight = None
    if balanced:
        counts = torch.bincount(ys, minlength=classes).float().clamp_min(1)
        weight = counts.sum() / (classes * counts)
    w = torch.zeros(xs.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, ys, weight=weight) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda z: (torch.tensor((z - mu) / sd, dtype=torch.float32) @ w + b).argmax(1).numpy()


def object_rows(features: np.ndarray, scenes: list[dict], patch: int):
    """Per object: (mean feature over its covered patches, shape index, colour index); per image: (mean patch
    feature, shape-presence vector [8])."""
    obj_x, shape_y, colour_y, img_x, present = [], [], [], [], []
    colours = list(COLORS)
    for f, scene in zip(features, scenes):
        for o in scene["objects"]:
            cover = patch_coverage(o["mask"], o["mask"].shape[0] // patch)
            keep = cover >= 0.5 if (cover >= 0.5).any() else cover >= cover.max()
            obj_x.append(f[keep].mean(0))
            shape_y.append(SHAPES.index(o["shape"]))
            colour_y.append(colours.index(o["color"]))
        img_x.append(f.mean(0))
        p = np.zeros(len(SHAPES), int)
        p[[SHAPES.index(o["shape"]) for o in scene["objects"]]] = 1
        present.append(p)
    return np.array(obj_x), np.array(shape_y), np.array(colour_y), np.array(img_x), np.array(present)


def probe_scores(train_features, train_scenes, test_features, test_scenes, patch: int) -> dict:
    """The three probes' test accuracies (%) for one feature extractor's [N, P, C] features."""
    tr, te = object_rows(train_features, train_scenes, patch), object_rows(test_features, test_scenes, patch)
    shape = fit_linear_probe(tr[0], tr[1], len(SHAPES))
    colour = fit_linear_probe(tr[0], tr[2], len(COLORS))
    presence = []
    for k in range(len(SHAPES)):
        predict = fit_linear_probe(tr[3], tr[4][:, k], 2, balanced=True)
        hit, truth = predict(te[3]) == te[4][:, k], te[4][:, k] == 1
        presence.append(50.0 * (hit[truth].mean() + hit[~truth].mean()))
    return {"object_shape": 100.0 * float((shape(te[0]) == te[1]).mean()),
            "object_colour": 100.0 * float((colour(te[0]) == te[2]).mean()),
            "image_shape_presence": float(np.mean(presence)), "objects": int(len(te[1]))}


def patch_features(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """f_v(x) of uint8 images [N, S, S, 3] as float32 [N, P, C] (CPU)."""
    out = []
    with torch.no_grad():
        for _, px in iter_pixel_batches(images, batch_size, "patch features"):
            out.append(model.image_features(px).float().cpu())
    return torch.cat(out).numpy()


def raw_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """uint8 [N, S, S, 3] -> [N, P, patch * patch * 3] pixel patches in [0, 1], row-major like the ViT's."""
    n, s = images.shape[:2]
    g = s // patch
    x = images.reshape(n, g, patch, g, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g * g, -1).astype(np.float32) / 255.0


def shape_swap_accuracy(model, tokenizer, scenes: list[dict], images: np.ndarray, batch_size: int) -> dict:
    """% of (true caption, shape-swapped twin) pairs whose true caption is closer to the image's global embedding
    (a tie is wrong), with the scene and with a mid-grey image; over every test caption that has a twin."""
    margin = SceneConfig().relation_margin * images.shape[1]
    negatives = scene_negatives(scenes, margin, seed=0)
    pairs = [(i, c, n) for i, (s, ns) in enumerate(zip(scenes, negatives)) for c, n in zip(s["captions"], ns) if n]
    if not pairs:
        raise ValueError("no caption of the test scenes has a shape-swapped twin")
    true = text_embeddings(model, tokenizer, [c for _, c, _ in pairs])
    swapped = text_embeddings(model, tokenizer, [n for _, _, n in pairs])
    scene = image_embeddings(model, images, batch_size)[torch.tensor([i for i, _, _ in pairs])]
    grey = image_embeddings(model, np.full_like(images[:1], 128), 1)

    def accuracy(img: torch.Tensor) -> float:
        return 100.0 * float(((img * true).sum(-1) > (img * swapped).sum(-1)).float().mean())

    return {"scene": accuracy(scene), "blank_image": accuracy(grey), "pairs": len(pairs)}


def shape_probe_report(checkpoint, num_train: int = 3000, num_test: int = 500, batch_size: int = 128) -> Report:
    if num_train < 50 or num_test < 10:
        raise ValueError(f"need at least 50 train and 10 test scenes, got {num_train} and {num_test}")
    model, tokenizer = load_stage1_run(checkpoint)
    size, patch = model.config.image_size, model.config.patch_size
    train, test = builtin_scenes("train", num_train, size), builtin_scenes("test", num_test, size)
    train_images, test_images = scene_images(train, size), scene_images(test, size)
    torch.manual_seed(0)
    random_init = type(model)(model.config).eval().to(next(model.parameters()).device)
    extractors = {"model": lambda im: patch_features(model, im, batch_size),
                  "random_init": lambda im: patch_features(random_init, im, batch_size),
                  "raw_pixels": lambda im: raw_patches(im, patch)}
    result = {"checkpoint": str(checkpoint), "features": "f_v(x) patch features (what stage 2 reads)",
              "data": f"built-in scenes: probes trained on {len(train)} train scenes, scored on {len(test)} test "
                      "scenes", "chance": {"object_shape": 100.0 / len(SHAPES), "object_colour": 100.0 / len(COLORS),
                                           "image_shape_presence": 50.0}}
    for name, extract in extractors.items():
        result[name] = probe_scores(extract(train_images), train, extract(test_images), test, patch)
    result["chance"]["caption_vs_shape_swap"] = 50.0
    swaps = {"model": shape_swap_accuracy(model, tokenizer, test, test_images, batch_size),
             "random_init": shape_swap_accuracy(random_init, tokenizer, test, test_images, batch_size)}
    for name, swap in swaps.items():
        result[name]["caption_vs_shape_swap"] = swap["scene"]
    result["model_blank_image"] = {"caption_vs_shape_swap": swaps["model"]["blank_image"]}
    result["shape_swap_pairs"] = swaps["model"]["pairs"]
    columns = ("object_shape", "object_colour", "image_shape_presence", "caption_vs_shape_swap")
    rows = [{"features": name, **{k: result[name].get(k, "") for k in columns}}
            for name in ("model", "model_blank_image", "random_init", "raw_pixels", "chance")]
    return Report("Shape probe: can a linear read-out name an object's shape from the frozen patch features? (%)",
                  result, rows)
