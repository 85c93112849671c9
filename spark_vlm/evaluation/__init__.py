"""Every evaluation protocol, as library calls that return a `Report` (eval/*.py are their command lines).

  report.py          the one report format: JSON + a markdown table (`Report`, `write_report`, `read_json`,
                     `report_or_exit` for the CLIs)
  stage1_run.py      load a stage-1 run; image / text / prompt embeddings in fixed batches
  data.py            the built-in test scenes, or COCO / Karpathy captioned images
  retrieval.py       zero-shot retrieval R@K and K-Precision
  class_prompts.py   class names and template sets (bundled ImageNet names and CLIP's 80 templates in data/)
  classification.py  zero-shot classification of a class-folder tree
  segmentation.py    zero-shot segmentation mIoU (VOC or the built-in scenes), the paper's and the standard protocol
  probes.py          fine-grained (SugarCrepe-style) probes
  sugarcrepe.py      SugarCrepe from its local JSON files + COCO val2017 images
  mmvp.py            MMVP-VLM from its local Questions.csv + images
  alignment.py       per-token alignment maps of a caption over its image (for eval/visualize.py)
  grounding.py       words -> their objects' masks (mass-in-mask, pointing) + the L_f shortcut diagnostics
  captioner.py       load a stage-2 run; caption images or a folder
  captioning.py      caption metrics (BLEU..CIDEr) and CHAIR of a captions file
  pope.py            few-shot yes/no object probing of a captioner (POPE)

The numbers themselves are pure functions in spark_vlm/metrics/.
"""
