"""spark-vlm: SPARK (SPARC) fine-grained vision-language pretraining and Flamingo-style captioning."""
__version__ = "0.1.0"
