"""The text fast path: cut a batch of token ids after its last end-of-text token.

Exact only for text graphs exported variable-length (the manifest's text property
`variable_length`), which the exporter allows only under a causal mask with pooling at an EOT
position (tokens after EOT cannot reach the output), or for a graph that masks its padding
itself (BERT / XLM-R towers, `padding_mask`), which is then the source library's padding=True. CLIP prompts are short ("a photo of a
{label}." is 8 tokens of 77), so most of a fixed-length text tower's work is padding.
"""

from __future__ import annotations

import numpy as np

from clipexport.artifact.layout import MIN_TEXT_LENGTH
from clipexport.artifact.manifest import TokenizerConfig, TowerProperties


def trimmed_length(ids: np.ndarray, pooling: str, eot_id: int, pad_id: int | None = None) -> int:
    """The shortest length that keeps every row's pooled (EOT) token; the full length when unsure.
    With `pad_id` (a graph that masks padding itself): the shortest that keeps every non-pad token."""
    full = ids.shape[1]
    if pad_id is not None:
        columns = np.nonzero((ids != pad_id).any(axis=0))[0]
        last = int(columns.max()) if len(columns) else 0
    elif pooling == "argmax":  # open_clip's default: EOT is the largest id
        last = int(ids.argmax(axis=1).max())
    elif pooling == "eos":
        hits = ids == eot_id
        if not hits.any(axis=1).all():
            return full  # a row without EOT pools at position 0: nothing safe to cut
        last = int(hits.argmax(axis=1).max())
    else:
        return full
    return min(full, max(MIN_TEXT_LENGTH, last + 1))


def trim(ids: np.ndarray, properties: TowerProperties, tokenizer: TokenizerConfig) -> np.ndarray:
    """`ids` cut after the batch's last EOT (or last real token, for a graph that masks padding)
    when the graph allows it, else unchanged."""
    if not properties.trimmable or ids.ndim != 2 or not len(ids):
        return ids
    pad_id = tokenizer.pad_id if properties.padding_mask else None
    return ids[:, : trimmed_length(ids, str(properties.pooling), tokenizer.eot_id, pad_id)]


# An ordinary word piece: "a</w>" in CLIP's vocabulary; any id below the vocabulary size will do
# for graphs whose tokenizer the runtime does not implement.
PLACEHOLDER_TOKEN = 320


def placeholder_ids(config: TokenizerConfig, rows: int, words: int = 1) -> np.ndarray:
    """[SOT, word x `words`, EOT, pad...] rows: benchmark inputs for an artifact whose tokenizer
    the runtime does not have."""
    ids = np.full((rows, config.context_length), config.pad_id, dtype=np.int64)
    ids[:, 0] = config.sot_id if config.sot_id is not None else config.eot_id
    ids[:, 1 : 1 + words] = min(PLACEHOLDER_TOKEN, max(config.vocab_size - 1, 0))
    ids[:, 1 + words] = config.eot_id
    return ids
