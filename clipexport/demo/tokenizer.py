"""The demo model's tokenizer: a word-level Hugging Face `tokenizers` tokenizer over the demo's
vocabulary ([PAD]=0, [SOS]=1, [EOS]=2, [UNK]=3), so the text tower's embedding table is a few
hundred rows instead of CLIP BPE's 49408 and the shipped checkpoint stays small. It exercises the
runtime's tokenizer.json path end to end."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ("[PAD]", "[SOS]", "[EOS]", "[UNK]")
CONTEXT_LENGTH = 24


def build_tokenizer(folder: Path) -> Path:
    """Write tokenizer.json (+ transformers' config files) into `folder`; deterministic."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from clipexport.demo.shapes import vocabulary

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[SOS] $A [EOS]", special_tokens=[("[SOS]", 1), ("[EOS]", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[SOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=CONTEXT_LENGTH,
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder
