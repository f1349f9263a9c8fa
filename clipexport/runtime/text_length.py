"""The text fast path: cut a batch of token ids after its last end-of-text token.

Exact only for text graphs exported variable-length (the manifest's text property
`variable_length`), which the exporter allows only under a causal mask with pooling at an EOT
position: there, tokens after EOT cannot reach the output. CLIP prompts are short ("a photo of a
{label}." is 8 tokens of 77), so most of a fixed-length text tower's work is padding.
"""

from __future__ import annotations

import numpy as np

from clipexport.artifact.layout import MIN_TEXT_LENGTH
from clipexport.artifact.manifest import TokenizerConfig, TowerProperties


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
    return min(full, max(MIN_TEXT_LENGTH, last + 1))


def trim(ids: np.ndarray, properties: TowerProperties, eot_id: int) -> np.ndarray:
    """`ids` cut after the batch's last EOT when the graph allows it, else unchanged."""
    if not properties.trimmable or ids.ndim != 2 or not len(ids):
        return ids
    return ids[:, :trimmed_length(ids, str(properties.pooling), eot_id)]


# An ordinary word piece: "a</w>" in CLIP's vocabulary; any id below the vocabulary size will do
# for graphs whose tokenizer the runtime does not implement.
PLACEHOLDER_TOKEN = 320


def placeholder_ids(config: TokenizerConfig, rows: int, words: int = 1) -> np.ndarray:
    """[SOT, word x `words`, EOT, pad...] rows: benchmark inputs for an artifact whose tokenizer
    the runtime does not have."""
    ids = np.full((rows, config.context_length), config.pad_id, dtype=np.int64)
    ids[:, 0] = config.sot_id if config.sot_id is not None else config.eot_id
    ids[:, 1:1 + words] = min(PLACEHOLDER_TOKEN, max(config.vocab_size - 1, 0))
    ids[:, 1 + words] = config.eot_id
    return ids
