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


def train_unigram_tokenizer(context_length: int = 64):
    """A SigLIP-style (T5-like) fast tokenizer trained offline: Unigram over Metaspace pieces, an
    EOS appended, padded with the EOS token, as SigLIP's processor pads to max_length."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from clipexport.datasets import DEFAULT_CAPTIONS, default_calibration_dir, load_text_file

    corpus = list(DEFAULT_CAPTIONS) + load_text_file(default_calibration_dir() / "captions.txt")
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>",
                                   model_max_length=context_length)


def save_tiny_hf_siglip(folder: Path, seed: int = 13) -> Path:
    """A tiny random transformers SiglipModel with an offline-trained tokenizer and SigLIP's image
    processor (squash resize, mean/std 0.5), saved with save_pretrained."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTextConfig, SiglipVisionConfig

    torch.manual_seed(seed)
    tokenizer = train_unigram_tokenizer(64)
    text = SiglipTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=64, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                image_size=64, patch_size=16)
    SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())).eval().save_pretrained(folder)
    SiglipImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
