"""Tower modules: one `nn.Module` per tower with a single tensor in and a single tensor out,
which is the shape the ONNX exporter and TensorRT want.

torch is imported at module level here on purpose: this module is only ever imported from
inside functions that already required torch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class OpenClipVision(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # unused parameters (the text half) are dropped by the exporter

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image)


class OpenClipText(nn.Module):
    """open_clip pools at the end-of-text position with an integer argmax over the token ids
    (the EOT id is the largest in the vocabulary), so ids never pass through a float cast.

    With `variable_length`, the graph accepts any sequence length up to the context length: the
    positional embedding and the causal mask are sliced to it. Under a causal mask with EOT
    pooling, tokens after EOT never reach the output, so a runtime may cut each batch after its
    last EOT (the text fast path) and get the full-length result."""

    def __init__(self, model: nn.Module, variable_length: bool = False):
        super().__init__()
        self.model = model
        self.variable_length = variable_length

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.variable_length:
            return self.model.encode_text(input_ids)
        from open_clip.transformer import text_global_pool

        m = self.model
        length = input_ids.shape[1]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(input_ids).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = text_global_pool(x, input_ids, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return x


def _features(output: Any) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output is the projection.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HfVision(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=image))


class HfText(nn.Module):
    """CLIP's text model is causal and pools at EOT, and SigLIP was trained on max-length padded
    text without a mask, so both equal the reference without an attention mask. BERT / XLM-R
    towers (Chinese-CLIP, AltCLIP) and MetaCLIP 2 are called with the tokenizer's mask: with
    `pad_id` the graph derives it (non-pad tokens), so one int64 input still suffices."""

    def __init__(self, model: nn.Module, pad_id: int | None = None):
        super().__init__()
        self.model = model
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.pad_id is None:
            return _features(self.model.get_text_features(input_ids=input_ids))
        mask = (input_ids != self.pad_id).to(torch.int64)
        return _features(self.model.get_text_features(input_ids=input_ids, attention_mask=mask))


class LibraryText(nn.Module):
    """The source library's text path as a module (texts in): verify's reference where the
    library tokenizes and masks differently from the exported graph's single-input form."""

    def __init__(self, encode: Any):
        super().__init__()
        self.encode = encode

    def forward(self, texts: list[str]) -> torch.Tensor:
        return _features(self.encode(texts))


class Normalized(nn.Module):
    """L2-normalise a tower's output (what retrieval and zero-shot classification consume)."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower(x), dim=-1)


def exportable(tower: nn.Module, normalize: bool) -> nn.Module:
    return (Normalized(tower) if normalize else tower).eval()
