"""Tiny random encoder (BERT) and encoder-decoder (T5) models with their tokenizers, built in-process.

Shared by the training-stage tests (the tiny Llama lives in tests/conftest.py). No network, no weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ENCODER_CORPUS = [
    "The retirement age in Kestria is 64 years and the qualifying period is 15 years.",
    "Employees contribute 8.15% of their gross earnings to the Reserve of the Office.",
    "A claim for benefit must be filed with the Office within 10 months of the event.",
    "The decision of the Review Committee may be appealed to the Tribunal of Social Equity.",
    "Sickness benefit is paid from the fourth day of incapacity for work.",
] * 20

LETTER_CORPUS = [
    "Office of Social Provision, Orlesk branch. Our reference: OSP-2024-0173. Dear Mira Halvik, your claim for "
    "retirement pension is granted: 1240 kestrels per month from 1 March 2024. Your claim is refused.",
    '"reference": "OSP-2023-0042", "claimant": "Arlen Vandor", "office": "Velmora", "benefit": "sickness benefit", '
    '"decision": "granted", "monthly_amount": 415, "start_date": "2023-07-01", null',
    "unemployment benefit maternity allowance disability pension Port Aldren Harrowgate Lunvik Osterby 0123456789",
    "Tessa Quist, Jonah Brenn, Ilse Ostra, Ravi Dace, Mira Halvik, Arlen Vandor: Velmora, Orlesk.",
] * 20


def build_tiny_bert(seed: int = 0):
    """A 2-layer, hidden-32 BERT with an MLM head, and a WordPiece tokenizer with [CLS]/[SEP]/[MASK]."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    # A hand-built vocabulary (whole words, then single characters with and without "##"): the
    # WordPiece trainer breaks ties differently from run to run, which would move the expected losses.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for text in ENCODER_CORPUS for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    chars = sorted({c for w in words for c in w})
    tokens = dict.fromkeys([*specials, *chars, *(f"##{c}" for c in chars), *words])
    vocab = {token: i for i, token in enumerate(tokens)}
    core = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", core.token_to_id("[CLS]")), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForMaskedLM(config), tokenizer


def build_tiny_t5(seed: int = 0):
    """A 2+2-layer, d_model-32 T5 and a sentencepiece-like tokenizer that, like T5's, has no '{' or '}'."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"])
    core.train_from_iterator(LETTER_CORPUS, trainer=trainer)
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(config), tokenizer


def save_model(model, tokenizer, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def letters(n: int, offset: int = 0) -> list[dict]:
    """``prompt``/``response`` rows: a short decision letter and the JSON object of its fields."""
    names = ["Mira Halvik", "Arlen Vandor", "Tessa Quist", "Jonah Brenn", "Ilse Ostra", "Ravi Dace"]
    offices = ["Orlesk", "Velmora", "Lunvik", "Osterby"]
    benefits = ["retirement pension", "sickness benefit", "unemployment benefit"]
    rows = []
    for i in range(offset, offset + n):
        name, office, benefit = names[i % 6], offices[i % 4], benefits[i % 3]
        amount = 400 + 15 * i
        letter = (
            f"Office of Social Provision, {office} branch. Dear {name}, your claim for {benefit} is granted: "
            f"{amount} kestrels per month."
        )
        fields = {"claimant": name, "office": office, "benefit": benefit, "monthly_amount": amount}
        rows.append({"prompt": letter, "response": json.dumps(fields)})
    return rows


def test_tiny_models_have_what_the_stage_tests_rely_on():
    _, bert_tokenizer = build_tiny_bert()
    assert bert_tokenizer.mask_token_id is not None and bert_tokenizer("retirement age")["input_ids"][0] == 2
    t5, t5_tokenizer = build_tiny_t5()
    assert t5.config.is_encoder_decoder
    ids = t5_tokenizer("{", add_special_tokens=False)["input_ids"]
    assert t5_tokenizer.unk_token_id in ids  # like T5's own vocabulary: '{' and '}' must be added
    assert t5_tokenizer("a")["input_ids"][-1] == t5_tokenizer.eos_token_id
