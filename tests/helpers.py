"""Test helpers that build inputs the way users have them."""

from __future__ import annotations

from pathlib import Path


def random_photo(path: Path, seed: int, size: tuple[int, int] = (96, 72), quality: int = 92) -> Path:
    """A JPEG of seeded random pixels (what the bulk tests embed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=quality)
    return path


def save_tiny_hf_clip(folder: Path, seed: int = 11) -> Path:
    """A tiny random transformers CLIPModel with real CLIP tokenizer files and an image processor,
    saved with save_pretrained: the layout of a hub snapshot, made offline."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

    torch.manual_seed(seed)
    text = CLIPTextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=64,
    )
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        projection_dim=64,
    )
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
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>", model_max_length=context_length
    )


def save_tiny_hf_siglip(folder: Path, seed: int = 13) -> Path:
    """A tiny random transformers SiglipModel with an offline-trained tokenizer and SigLIP's image
    processor (squash resize, mean/std 0.5), saved with save_pretrained."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTextConfig, SiglipVisionConfig

    torch.manual_seed(seed)
    tokenizer = train_unigram_tokenizer(64)
    text = SiglipTextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
    )
    SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())).eval().save_pretrained(folder)
    SiglipImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _training_corpus() -> list[str]:
    from test_tokenizer import TRICKY

    from clipexport.datasets import DEFAULT_CAPTIONS, default_calibration_dir, load_text_file

    return list(DEFAULT_CAPTIONS) + load_text_file(default_calibration_dir() / "captions.txt") + TRICKY


def train_bert_tokenizer(context_length: int):
    """A Chinese-CLIP-style BERT WordPiece tokenizer (lowercase, CJK characters split), trained
    offline: [CLS] text [SEP], padded with [PAD] = 0."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_training_corpus(), trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=context_length,
    )


def train_xlmr_tokenizer(context_length: int):
    """An XLM-R / XLM-V-style SentencePiece Unigram tokenizer (AltCLIP, MetaCLIP 2), trained
    offline: <s> text </s>, <s>=0 <pad>=1 </s>=2 <unk>=3, padded with <pad>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        _training_corpus(), trainers.UnigramTrainer(vocab_size=600, special_tokens=specials, unk_token="<unk>")
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=context_length,
    )


_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
_TINY_VISION = {**_TINY, "image_size": 64, "patch_size": 16}


def save_tiny_hf_family(family: str, folder: Path, seed: int = 17) -> Path:
    """A tiny random transformers model of `family` (chinese_clip, altclip, metaclip_2) with an
    offline-trained tokenizer of the family's kind and its image processor, saved with
    save_pretrained: the layout of a hub snapshot."""
    import torch
    import transformers as t

    torch.manual_seed(seed)
    if family == "chinese_clip":
        tokenizer = train_bert_tokenizer(52)
        text = t.ChineseCLIPTextConfig(
            **_TINY, vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id
        )
        config = t.ChineseCLIPConfig(
            text_config=text.to_dict(),
            vision_config=t.ChineseCLIPVisionConfig(**_TINY_VISION).to_dict(),
            projection_dim=64,
        )
        model, processor = t.ChineseCLIPModel(config), t.ChineseCLIPImageProcessor
    elif family == "altclip":
        tokenizer = train_xlmr_tokenizer(64)
        text = t.AltCLIPTextConfig(
            **_TINY,
            vocab_size=len(tokenizer),
            max_position_embeddings=66,
            project_dim=64,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        config = t.AltCLIPConfig(
            text_config=text.to_dict(), vision_config=t.AltCLIPVisionConfig(**_TINY_VISION).to_dict(), projection_dim=64
        )
        model, processor = t.AltCLIPModel(config), t.CLIPImageProcessor
    elif family == "metaclip_2":
        tokenizer = train_xlmr_tokenizer(77)
        text = t.MetaClip2TextConfig(
            **_TINY,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        config = t.MetaClip2Config(
            text_config=text.to_dict(),
            vision_config=t.MetaClip2VisionConfig(**_TINY_VISION).to_dict(),
            projection_dim=64,
        )
        model, processor = t.MetaClip2Model(config), t.CLIPImageProcessor
    else:
        raise ValueError(family)
    model.eval().save_pretrained(folder)
    processor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_gemma_like_tokenizer(context_length: int):
    """A SigLIP 2-style (Gemma) tokenizer trained offline: byte-fallback BPE over Metaspace pieces,
    case kept, EOS appended, padded with <pad> = 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(_training_corpus(), trainers.BpeTrainer(vocab_size=900, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=context_length,
    )


def save_tiny_hf_siglip2_fixed(folder: Path, seed: int = 19) -> Path:
    """A fixed-resolution SigLIP 2 checkpoint as the hub ships them: model_type 'siglip'
    (SiglipModel), a Gemma-style tokenizer, SigLIP's squash processor."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTextConfig, SiglipVisionConfig

    torch.manual_seed(seed)
    tokenizer = train_gemma_like_tokenizer(64)
    text = SiglipTextConfig(
        **_TINY,
        max_position_embeddings=64,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = SiglipConfig(text_config=text.to_dict(), vision_config=SiglipVisionConfig(**_TINY_VISION).to_dict())
    SiglipModel(config).eval().save_pretrained(folder)
    SiglipImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_xlmr_text_tower(folder: Path) -> Path:
    """What `--text-config` takes: a tiny XLM-RoBERTa config (open_clip's xlm-roberta-base text
    tower, shrunk) with an XLM-R-style tokenizer, saved offline with save_pretrained."""
    from transformers import XLMRobertaConfig

    tokenizer = train_xlmr_tokenizer(77)
    XLMRobertaConfig(
        **_TINY, vocab_size=len(tokenizer), max_position_embeddings=80, pad_token_id=1, bos_token_id=0, eos_token_id=2
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def edit_shard_metadata(path: Path, edit) -> None:
    """Rewrite a dataset shard with `edit(metadata dict)` applied to its clipexport metadata (a
    damaged or tampered shard, for the tests of what readers and resumes make of it)."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    metadata = dict(table.schema.metadata)
    data = json.loads(metadata[b"clipexport"])
    changed = edit(data)
    metadata[b"clipexport"] = changed if isinstance(changed, (bytes, str)) else json.dumps(data)
    pq.write_table(table.replace_schema_metadata(metadata), path)


def to_first_layout(folder: Path) -> None:
    """Turn a dataset into the first layout (`_embeddings.json` beside shards without metadata), as
    datasets made before the self-describing shards are: for the tests that they are still read
    and that a resume moves them on."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    shards, job = [], None
    for path in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(path)
        data = json.loads(table.schema.metadata[b"clipexport"])
        job = data
        pq.write_table(table.replace_schema_metadata(None), path, compression="zstd")
        shards.append({**data["shard"], "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    manifest = {
        "format": "clipexport-embeddings",
        "version": 1,
        "created": job["created"],
        "updated": job["created"],
        "artifact": job["artifact"],
        **job["identity"],
        "complete": len(shards) == -(-job["identity"]["inputs"] // job["identity"]["shard_size"]),
        "rows": sum(s["rows"] for s in shards),
        "shards": shards,
    }
    (folder / "_embeddings.json").write_text(json.dumps(manifest))
