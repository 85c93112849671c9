"""CHAIR object hallucination (Rohrbach et al., 2018) for `evaluate`, through
spark_vlm.metrics.chair (the reference LisaAnne/Hallucination rules, COCO synonyms by default).

    import evaluate
    chair = evaluate.load("eval/metrics/chair")   # a local path: works offline
    chair.compute(predictions=["a dog and a cat on a sofa"], references=[["dog", "couch"]])
    # {"CHAIRs": 100.0, "CHAIRi": 33.3..., ...}

references[i] lists the objects present in image i: category names or any of their synonyms
("sofa" counts as "couch"). Like the reference, pass the image's reference captions too
(``reference_captions=[[caption, ...], ...]``): every object they name counts as present.
Pass ``synonyms={category: [words]}`` to compute() to use a custom vocabulary (e.g. the synthetic
scenes' shapes) instead of COCO's, or ``reference_exact=True`` for the reference's singulariser.
"""

import datasets
import evaluate

from spark_vlm.metrics.chair import ChairVocabulary, compute_chair, extract_objects

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
    reference_captions: optional list of lists of reference captions per image; objects they name count as present.
    synonyms: optional {category: [synonyms]}; defaults to the COCO vocabulary.
    reference_exact: the reference implementation's singulariser and synonym parsing (COCO only).
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

    def _compute(self, predictions, references, reference_captions=None, synonyms=None, reference_exact=False):
        if reference_exact and synonyms:
            raise ValueError("reference_exact reproduces the reference's COCO vocabulary; drop synonyms")
        if reference_captions is not None and len(reference_captions) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions but {len(reference_captions)} lists of reference captions")
        if synonyms:
            vocab = ChairVocabulary.from_synonyms(synonyms)
        else:
            vocab = ChairVocabulary.coco(reference_exact=reference_exact)
        gt_objects = {}
        for i, objects in enumerate(references):
            categories = set()
            for name in objects:
                category = vocab.category_of(name)
                if category is None:
                    raise ValueError(f"reference object {name!r} (example {i}) is not in the vocabulary")
                categories.add(category)
            for caption in (reference_captions[i] if reference_captions is not None else []):
                if not isinstance(caption, str):
                    raise ValueError(f"reference caption {caption!r} (example {i}) is not a string")
                categories.update(c for _, c in extract_objects(caption, vocab))
            gt_objects[i] = categories
        results = [{"image_id": i, "caption": p} for i, p in enumerate(predictions)]
        scores = compute_chair(results, gt_objects, vocab)
        scores.pop("per_caption")  # evaluate returns flat numbers
        return scores
