"""Output-preserving changes clipexport makes to an open_clip model before using it.

Each returns how many modules it changed, and the loader records the non-zero ones in the
manifest (`source.adjustments`), so an artifact says what was done to the model it came from.
"""

from __future__ import annotations

import types
from typing import Any

SCALED_COSINE_ATTENTION = "scaled_cosine_attention_matmul"


def fix_scaled_cosine_attention(model: Any) -> int:
    """open_clip's `Attention` with `scaled_cosine_attn=True` calls `torch.bmm` on its 4-D
    [N, heads, L, head_dim] tensors, which raises "batch1 must be a 3D tensor" in PyTorch itself
    (open_clip 3.x), so such a model neither runs nor exports. The same computation with
    `torch.matmul` (which batches over both leading axes) is what the code means; the module's
    parameters are untouched. The reference model verify compares against gets the same fix."""
    from open_clip.transformer import Attention

    changed = 0
    for module in model.modules():
        if isinstance(module, Attention) and getattr(module, "logit_scale", None) is not None:
            module.forward = types.MethodType(_scaled_cosine_forward, module)
            changed += 1
    return changed


def _scaled_cosine_forward(self: Any, x: Any, attn_mask: Any = None) -> Any:
    # open_clip.transformer.Attention.forward, logit_scale branch, with bmm -> matmul.
    import torch
    import torch.nn.functional as F

    n, length, channels = x.shape
    q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
    q = q.reshape(n, length, self.num_heads, -1).transpose(1, 2)
    k = k.reshape(n, length, self.num_heads, -1).transpose(1, 2)
    v = v.reshape(n, length, self.num_heads, -1).transpose(1, 2)
    if attn_mask is not None:
        if attn_mask.ndim == 3:
            attn_mask = attn_mask.reshape(n, self.num_heads, length, length)
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        else:
            attn_mask = attn_mask.to(dtype=q.dtype)
    attn = torch.matmul(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(-1, -2))
    attn = attn * torch.clamp(self.logit_scale, max=self.logit_scale_max).exp()
    if attn_mask is not None:
        attn = attn + attn_mask
    attn = self.attn_drop(attn.softmax(dim=-1))
    x = torch.matmul(attn, v)
    if self.head_scale is not None:
        x = x * self.head_scale
    x = x.transpose(1, 2).reshape(n, length, channels)
    return self.out_drop(self.out_proj(self.ln_inner(x)))


REPARAMETERIZED = "reparameterized"
_DEPLOY_HOOKS = ("reparameterize", "switch_to_deploy", "fuse")


def reparameterized(tower: Any) -> tuple[Any, tuple[str, ...]]:
    """The deployment form of a tower with train-time multi-branch blocks (MobileCLIP's FastViT /
    MobileOne, RepVGG-style timm models): timm's `reparameterize_model` folds each block's
    branches and batch norms into one conv, as Apple's MobileCLIP README requires before
    deployment. Works on a copy: the loaded model stays the unreparameterized reference that
    verify compares with. A tower without such blocks comes back unchanged, with no note."""
    blocks = [
        m
        for m in tower.modules()
        if type(m).__module__.startswith("timm.") and any(callable(getattr(m, hook, None)) for hook in _DEPLOY_HOOKS)
    ]
    if not blocks:
        return tower, ()
    from timm.utils.model import reparameterize_model

    return reparameterize_model(tower, inplace=False).eval(), (
        f"{REPARAMETERIZED} (timm reparameterize_model: {len(blocks)} blocks folded)",
    )
