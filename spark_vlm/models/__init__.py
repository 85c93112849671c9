from .dual_encoder import PRESETS, SparkConfig, SparkModel, SparkOutput, register_auto_classes

register_auto_classes()

__all__ = ["PRESETS", "SparkConfig", "SparkModel", "SparkOutput", "register_auto_classes"]
