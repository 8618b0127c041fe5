"""A small BPE tokenizer built offline for the tiny preset.

Real Stable Diffusion ships a CLIP tokenizer in ``tokenizer/``; the tiny preset needs one too,
but nothing can be downloaded, so we train a byte-pair encoder on a generated corpus of the
prompts the platform uses. Identifiers such as ``sks12`` split into ``sks`` + digits, and any
unseen word still tokenizes (the alphabet covers every lowercase letter, digit and punctuation
mark), so a new category never becomes an unknown token.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"

# Words that occur in prompts: the template, common product and scene vocabulary. The list only
# decides which words get a token of their own; every other word is spelled from sub-words.
_WORDS = """
a photo of in the background with and on at for sks
mug laptop sunscreen plant perfume sneaker lamp watch bottle bag chair shoe phone camera
book cup vase toy hat shirt dress kitchen desk beach garden marble street night studio
wood wooden tile tiles sand sky sea water grass leaf leaves stone brick wall room table
light dark bright soft warm cool blue red green yellow orange purple pink white black grey
gray brown gold silver pastel gradient pattern texture minimal modern luxury summer winter
autumn spring sunset sunrise flowers flower snow rain cozy clean simple elegant shadow
""".split()


def _corpus() -> list[str]:
    lines = [" ".join(_WORDS)]
    for i in range(1000):
        lines.append(f"a photo of mug, in the background of sks{i}")
    lines += [" ".join(string.ascii_lowercase), " ".join(string.digits), string.punctuation]
    return lines


def build_tiny_tokenizer(model_max_length: int = 32, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD, UNK],
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
    )
