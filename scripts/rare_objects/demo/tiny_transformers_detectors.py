"""Tiny, seeded open-vocabulary detectors with random weights, for tests: nothing is downloaded.

Each builder writes a folder in save_pretrained layout (config, safetensors weights,
processor and tokenizer files) that ``AutoProcessor.from_pretrained`` and
``AutoModelForZeroShotObjectDetection.from_pretrained`` load as they load the
published checkpoints, so it runs through the ``transformers_zero_shot`` detector
(``detector.transformers_zero_shot.model``):

* :func:`build_tiny_owlv2`: an ``Owlv2ForObjectDetection`` (ViT and text transformer
  of 2 layers, width 32, 64 px images in 16 px patches: 16 boxes per image) with an
  ``Owlv2ImageProcessor`` and a ``CLIPTokenizer``;
* :func:`build_tiny_grounding_dino`: a ``GroundingDinoForObjectDetection`` (a Swin
  backbone and a BERT text encoder of 1 layer, width 32, 12 queries) with a
  ``GroundingDinoImageProcessor`` and a ``BertTokenizer``;
* :func:`build_tiny_omdet_turbo`: an ``OmDetTurboForObjectDetection`` (a Swin backbone
  and a CLIP text encoder of 1 layer, 12 queries) with a ``DetrImageProcessor`` and a
  ``CLIPTokenizer``.

The tokenizers are built here: a byte-level BPE vocabulary with one merge chain per
word of ``words`` (CLIP), a WordPiece vocabulary of the words, letters and digits
(BERT); other words are spelled out. The weights are random (the scores mean
nothing, but they spread over (0, 1) rather than all rounding to 1; a test sets
``detector.conf`` low to get boxes), the same for a seed.

Idempotent: an existing folder is returned as it is unless ``force=True``; a folder is
written beside its destination and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

# The schema's default prompts' words and the demo's classes.
DEFAULT_WORDS = (
    "car truck bus trailer construction vehicle pedestrian motorcycle bicycle traffic cone "
    "barrier person"
).split()


def _words(words: Iterable[str] | None) -> list[str]:
    found = list(DEFAULT_WORDS)
    for text in words or ():
        found.extend(str(text).lower().split())
    return list(dict.fromkeys(found))


def _write_folder(out: Path, force: bool, write) -> Path:
    """Call ``write(folder)`` on a fresh folder beside ``out`` and rename it to ``out``."""
    if (out / "config.json").is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def clip_tokenizer(words: Iterable[str] | None = None, max_length: int = 16):
    """A CLIP tokenizer (byte-level BPE) whose vocabulary spells every text and holds each
    word of ``words`` (and :data:`DEFAULT_WORDS`) as one token."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _words(words):
        chars = list(word)
        if len(chars) < 2:
            continue
        current = chars[0]
        for i, char in enumerate(chars[1:], start=1):
            following = char + "</w>" if i == len(chars) - 1 else char
            if (current, following) not in merges:
                merges.append((current, following))
            current += following
            vocab.setdefault(current, len(vocab))
    # special tokens last, as in CLIP's vocabulary: OWL-ViT treats a query whose first
    # token has id 0 as padding
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def bert_tokenizer(words: Iterable[str] | None = None, max_length: int = 64):
    """A BERT tokenizer (WordPiece) with the words of ``words`` (and :data:`DEFAULT_WORDS`),
    letters and digits, and the dot that joins Grounding DINO's prompts."""
    from transformers import BertTokenizer

    symbols = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-"]
    tokens += list(symbols) + [f"##{c}" for c in symbols] + _words(words)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=max_length)


def _tiny_swin():
    """The tiny Swin backbone of the Grounding DINO and OmDet-Turbo builds (3 feature levels)."""
    from transformers import SwinConfig

    return SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_indices=[2, 3, 4],
    )


def build_tiny_owlv2(
    out_dir: str | os.PathLike,
    seed: int = 0,
    words: Iterable[str] | None = None,
    image_size: int = 64,
    force: bool = False,
) -> Path:
    """A random-weight OWLv2 folder (about 0.5 MB) for prompts made of ``words``."""

    def write(folder: Path) -> None:
        import torch
        from transformers import (
            Owlv2Config,
            Owlv2ForObjectDetection,
            Owlv2ImageProcessor,
            Owlv2Processor,
        )

        tokenizer = clip_tokenizer(words)
        layers = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
        )
        config = Owlv2Config(
            text_config=dict(
                vocab_size=len(tokenizer),
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **layers,
            ),
            vision_config=dict(image_size=image_size, patch_size=16, **layers),
            projection_dim=32,
        )
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(config).eval()
        with torch.no_grad():  # logits 3 x the cosine similarity: scores spread over (0.05, 0.95)
            head = model.class_head
            head.logit_shift.weight.zero_(), head.logit_shift.bias.zero_()
            head.logit_scale.weight.zero_(), head.logit_scale.bias.fill_(2.0)  # elu(2) + 1
        processor = Owlv2Processor(
            image_processor=Owlv2ImageProcessor(size={"height": image_size, "width": image_size}),
            tokenizer=tokenizer,
        )
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return _write_folder(Path(out_dir), force, write)


def build_tiny_grounding_dino(
    out_dir: str | os.PathLike,
    seed: int = 0,
    words: Iterable[str] | None = None,
    force: bool = False,
) -> Path:
    """A random-weight Grounding DINO folder (about 0.7 MB) for prompts made of ``words``;
    images are resized to a shorter side of 64 px (at most 128 px long)."""

    def write(folder: Path) -> None:
        import torch
        from transformers import (
            BertConfig,
            GroundingDinoConfig,
            GroundingDinoForObjectDetection,
            GroundingDinoImageProcessor,
            GroundingDinoProcessor,
        )

        tokenizer = bert_tokenizer(words)
        backbone = _tiny_swin()
        text = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=tokenizer.model_max_length,
        )
        config = GroundingDinoConfig(
            backbone_config=backbone,
            text_config=text,
            num_queries=12,
            encoder_layers=1,
            decoder_layers=2,  # the box heads of layers after the first are tied to it
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            d_model=32,
            encoder_n_points=2,
            decoder_n_points=2,
            max_text_len=tokenizer.model_max_length,
        )
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config).eval()
        with torch.no_grad():  # smaller logits, so that random scores do not all round to 1
            model.model.decoder.layer_norm.weight.mul_(0.2)
        processor = GroundingDinoProcessor(
            image_processor=GroundingDinoImageProcessor(
                size={"shortest_edge": 64, "longest_edge": 128}
            ),
            tokenizer=tokenizer,
        )
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return _write_folder(Path(out_dir), force, write)


def build_tiny_omdet_turbo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    words: Iterable[str] | None = None,
    force: bool = False,
) -> Path:
    """A random-weight OmDet-Turbo folder (about 0.7 MB) for prompts made of ``words``;
    images are resized to 64 x 64 px. Its Swin backbone is transformers' own (the
    published checkpoint's is timm's, whose feature maps come channels last, hence no
    layer norm after the backbone here)."""

    def write(folder: Path) -> None:
        import torch
        from transformers import (
            CLIPTextConfig,
            DetrImageProcessor,
            OmDetTurboConfig,
            OmDetTurboForObjectDetection,
            OmDetTurboProcessor,
        )

        tokenizer = clip_tokenizer(words, max_length=77)  # the processor pads to 77 tokens
        backbone = _tiny_swin()
        text = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        config = OmDetTurboConfig(
            backbone_config=backbone,
            text_config=text,
            use_timm_backbone=False,
            apply_layernorm_after_vision_backbone=False,
            image_size=64,
            text_projection_in_dim=32,
            text_projection_out_dim=32,
            task_encoder_hidden_dim=32,
            class_embed_dim=32,  # not the decoder's width: it then projects the task features
            num_queries=12,
            encoder_in_channels=[16, 32, 64],  # the Swin stages' widths
            encoder_hidden_dim=16,
            vision_features_channels=[16, 16, 16],
            encoder_attention_heads=2,
            encoder_dim_feedforward=32,
            decoder_hidden_dim=16,
            decoder_num_heads=2,
            decoder_num_layers=1,
            decoder_dim_feedforward=32,
            decoder_num_points=2,
        )
        torch.manual_seed(seed)
        model = OmDetTurboForObjectDetection(config).eval()
        processor = OmDetTurboProcessor(
            image_processor=DetrImageProcessor(size={"height": 64, "width": 64}, do_pad=False),
            tokenizer=tokenizer,
        )
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return _write_folder(Path(out_dir), force, write)


BUILDERS = {
    "owlv2": build_tiny_owlv2,
    "grounding-dino": build_tiny_grounding_dino,
    "omdet-turbo": build_tiny_omdet_turbo,
}
