"""CIDEr-D for `evaluate`, computed by pycocoevalcap exactly as COCOEvalCap does (PTB tokenizer
first, x100), through spark_vlm.metrics.caption_metrics.score_captions.

    import evaluate
    cider = evaluate.load("eval/metrics/cider")   # a local path: works offline
    cider.compute(predictions=["a dog runs"], references=[["a dog is running", "a brown dog"]])
    # {"CIDEr": ...}

Each prediction is scored against its own list of reference captions; CIDEr's IDF weights come
from all references passed in one call, so score the whole evaluation set at once.
"""

import datasets
import evaluate

from spark_vlm.metrics.caption_metrics import score_captions

_CITATION = """\
@inproceedings{vedantam2015cider,
  title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
"""

_INPUTS = """
Args:
    predictions: list of generated captions, one per image.
    references: list of lists of reference captions, one list per prediction.
Returns:
    CIDEr: corpus CIDEr-D x100 (pycocoevalcap's Cider).
"""


class Cider(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references):
        # Positions stand in for image ids: prediction i goes with references[i].
        results = [{"image_id": i, "caption": p} for i, p in enumerate(predictions)]
        refs = {i: list(r) for i, r in enumerate(references)}
        scores = score_captions(results, refs, scorers=["CIDEr"])
        return {"CIDEr": scores["overall"]["CIDEr"]}
