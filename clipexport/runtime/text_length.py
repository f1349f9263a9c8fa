"""The text fast path: cut a batch of token ids after its last end-of-text token.

Exact only for text graphs exported variable-length (the manifest's text property
`variable_length`), which the exporter allows only under a causal mask with pooling at an EOT
position: there, tokens after EOT cannot reach the output. CLIP prompts are short ("a photo of a
{label}." is 8 tokens of 77), so most of a fixed-length text tower's work is padding.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# SOT + EOT, the empty caption: the shortest cut, and the exporter's floor for the sequence axis
# (torch's exporter specialises sizes 0 and 1).
MIN_LENGTH = 2


def trimmed_length(ids: np.ndarray, pooling: str, eot_id: int) -> int:
    """The shortest length that keeps every row's pooled (EOT) token; the full length when unsure."""
    full = ids.shape[1]
    if pooling == "argmax":  # open_clip's default: EOT is the largest id
        last = int(ids.argmax(axis=1).max())
    elif pooling == "eos":
        hits = ids == eot_id
        if not hits.any(axis=1).all():
            return full  # a row without EOT pools at position 0: nothing safe to cut
        last = int(hits.argmax(axis=1).max())
    else:
        return full
    return min(full, max(MIN_LENGTH, last + 1))


def trim(ids: np.ndarray, properties: Mapping[str, Any], eot_id: int) -> np.ndarray:
    """`ids` cut after the batch's last EOT when the graph allows it, else unchanged."""
    if not properties.get("variable_length") or not properties.get("causal_mask") or ids.ndim != 2 or not len(ids):
        return ids
    return ids[:, :trimmed_length(ids, str(properties.get("pooling")), eot_id)]
