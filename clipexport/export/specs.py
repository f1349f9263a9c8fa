"""One spec per tower: I/O names, dtypes, dynamic axes, and why the opset is what it is."""

from __future__ import annotations

from dataclasses import dataclass

from clipexport.artifact.manifest import Tower

# 17 is the first opset with LayerNormalization as one node: a decomposed LayerNorm
# (ReduceMean/Sub/Pow/Sqrt) overflows in FP16 and is TensorRT users' most common CLIP failure.
# 18 is what torch's dynamo exporter emits natively (no version conversion) and TensorRT 10 parses.
MIN_OPSET = 17
DEFAULT_OPSET = 18
BATCH_AXIS = "batch"
# Variable-length text graphs: the sequence axis runs from artifact.layout.MIN_TEXT_LENGTH to the
# context length.
SEQUENCE_AXIS = "sequence"


@dataclass(frozen=True)
class TowerSpec:
    tower: Tower
    input_name: str
    input_dtype: str
    output_name: str
    output_dtype: str = "float32"


VISION = TowerSpec(Tower.VISION, input_name="image", input_dtype="float32", output_name="image_embeds")
TEXT = TowerSpec(Tower.TEXT, input_name="input_ids", input_dtype="int64", output_name="text_embeds")
SPECS = {Tower.VISION: VISION, Tower.TEXT: TEXT}
