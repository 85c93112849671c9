"""The stage-1 objectives compared by the grounding sweep and the study: named stage-1 config overrides. "sparc" is
the paper's loss; the others add one fine-grained option each (issue 9), "sparc+all" all three."""
from __future__ import annotations

OPTIONS = ["fine_centre_positions=true", "fine_cross_images=4", "fine_content_tokens_only=true"]
VARIANTS = {
    "clip": ["loss=clip"],
    "filip": ["loss=filip"],
    "sparc": [],
    "sparc+centre": [OPTIONS[0]],
    "sparc+centre+sharp": [OPTIONS[0], "fine_threshold=0.5"],  # fewer patches kept (sigma 0.5 instead of 1/P)
    "sparc+softmax": ["fine_weights=softmax"],  # the paper's ablation: softmax of the raw similarities (not L1)
    "sparc+centre+softmax": [OPTIONS[0], "fine_weights=softmax"],
    # FILIP's per-token selection inside SPARK: each token groups its best patch only, contrasted also with its best
    # patch in K other images of the batch (the token -> image half of FILIP's late interaction, per token)
    "sparc+centre+max+cross16": [OPTIONS[0], "fine_weights=max", "fine_cross_images=16"],
    "sparc+centre+max+cross16+content": [OPTIONS[0], "fine_weights=max", "fine_cross_images=16", OPTIONS[2]],
    # the same + NegCLIP-style shape-swapped captions as extra negatives of the global loss (data/hard_negatives.py)
    "sparc+centre+max+cross16+content+shapeneg": [OPTIONS[0], "fine_weights=max", "fine_cross_images=16", OPTIONS[2],
                                                  "hard_negatives=shape_swap"],
    "sparc+shapeneg": ["hard_negatives=shape_swap"],
    "sparc+cross4": [OPTIONS[1]],
    "sparc+content": [OPTIONS[2]],
    "sparc+all": OPTIONS,
}
