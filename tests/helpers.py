"""Test helpers that build inputs the way users have them."""

from __future__ import annotations

from pathlib import Path


def save_tiny_hf_clip(folder: Path, seed: int = 11) -> Path:
    """A tiny random transformers CLIPModel with real CLIP tokenizer files and an image processor,
    saved with save_pretrained: the layout of a hub snapshot, made offline."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

    torch.manual_seed(seed)
    text = CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          max_position_embeddings=77, projection_dim=64)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=64, patch_size=16, projection_dim=64)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    vocab, merges = clip_vocab()
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    return folder


def clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) in Hugging Face's form, derived from open_clip's BPE file
    (both libraries ship the same OpenAI vocabulary)."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    ranked = sorted(tok.bpe_ranks.items(), key=lambda item: item[1])
    # open_clip spells the special tokens differently; same ids (49406, 49407).
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): index for token, index in tok.encoder.items()}
    return vocab, [(a, b) for (a, b), _ in ranked]
