"""CHAIR object hallucination (Rohrbach et al., 2018) for `evaluate`, through
spark_vlm.metrics.chair (the reference LisaAnne/Hallucination rules, COCO synonyms by default).

    import evaluate
    chair = evaluate.load("eval/metrics/chair")   # a local path: works offline
    chair.compute(predictions=["a dog and a cat on a sofa"], references=[["dog", "couch"]])
    # {"CHAIRs": 100.0, "CHAIRi": 33.3..., ...}

references[i] lists the objects present in image i: category names or any of their synonyms
("sofa" counts as "couch"). Pass ``synonyms={category: [words]}`` to compute() to use a custom
vocabulary (e.g. the synthetic scenes' shapes) instead of COCO's.
"""

import datasets
import evaluate

from spark_vlm.metrics.chair import ChairVocabulary, compute_chair

_CITATION = """\
@inproceedings{rohrbach2018object,
  title={Object Hallucination in Image Captioning},
  author={Rohrbach, Anna and Hendricks, Lisa Anne and Burns, Kaylee and Darrell, Trevor and Saenko, Kate},
  booktitle={EMNLP},
  year={2018}
}
"""

_INPUTS = """
Args:
    predictions: list of generated captions.
    references: list of lists of objects present in each caption's image.
    synonyms: optional {category: [synonyms]}; defaults to the COCO vocabulary.
Returns:
    CHAIRs, CHAIRi (in %), num_captions, num_mentions, num_hallucinated_mentions,
    mean_caption_length, mean_objects_per_caption.
"""


class Chair(evaluate.Metric):
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

    def _compute(self, predictions, references, synonyms=None):
        vocab = ChairVocabulary.from_synonyms(synonyms) if synonyms else ChairVocabulary.coco()
        gt_objects = {}
        for i, objects in enumerate(references):
            categories = set()
            for name in objects:
                category = vocab.category_of(name)
                if category is None:
                    raise ValueError(f"reference object {name!r} (example {i}) is not in the vocabulary")
                categories.add(category)
            gt_objects[i] = categories
        results = [{"image_id": i, "caption": p} for i, p in enumerate(predictions)]
        scores = compute_chair(results, gt_objects, vocab)
        scores.pop("per_caption")  # evaluate returns flat numbers
        return scores
