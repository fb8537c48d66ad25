"""A tiny, randomly initialised Qwen2-VL for tests and the offline demo.

:func:`build_tiny_qwen2vl` writes a complete ``save_pretrained`` folder (model,
tokenizer, image and video processors, chat template, generation config) that
loads with ``from_pretrained(..., local_files_only=True)`` exactly like a real
Qwen2-VL checkpoint, so the real transformers captioning code path runs end to
end on a CPU in seconds. Its captions are random word pieces, not language.

Everything is built locally: the byte-level BPE tokenizer is trained on a small
built-in corpus with the special tokens Qwen2-VL's chat template and processor
need; the weights come from ``torch.manual_seed(seed)``. The same seed gives the
same files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Qwen2-VL's special tokens, in the order Qwen2 numbers them (after the vocabulary).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The chat template of Qwen2-VL-*-Instruct.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "You are a helpful assistant.",
    "Describe this object from a driving camera in one sentence: what it is, its shape, colour and anything unusual.",
    "A yellow excavator digging at a road construction site.",
    "A man riding a bicycle along the side of the road.",
    "A white delivery truck parked next to the curb.",
    "A red car waiting at the traffic light.",
    "A pedestrian crossing the street with an umbrella.",
    "An orange traffic cone placed in the middle of the lane.",
    "A concrete barrier separating the lanes of the highway.",
    "A motorcycle with a rider wearing a black helmet.",
    "A trailer attached to a pickup truck.",
    "A city bus stopped at a bus stop with people getting on.",
    "A dog walking on the sidewalk next to its owner.",
    "A stroller pushed by a woman near the crosswalk.",
    "Some debris lying on the road, possibly a fallen box.",
    "An ambulance with flashing lights driving fast.",
    "A blurry dark shape that is hard to recognise.",
    "The object is small, grey and partly hidden behind a parked van.",
    "user assistant system image video picture object vehicle road street lane",
    "0 1 2 3 4 5 6 7 8 9 . , : ; ! ? ' \" ( ) - _ / \n",
]

# Small enough to build and run in seconds on a CPU (a few hundred thousand parameters).
_VOCAB_SIZE = 640
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096)
_VISION = dict(depth=1, embed_dim=32, num_heads=2, mlp_ratio=2, patch_size=14,
               spatial_merge_size=2, temporal_patch_size=2)
# Small crops stay small: images are resized to between these areas (in pixels).
_MIN_PIXELS = 56 * 56
_MAX_PIXELS = 28 * 28 * 16
_STAMP = "tiny_qwen2vl.json"
_BUILD_VERSION = 1


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def build_tiny_qwen2vl(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny Qwen2-VL to ``out_dir`` and return its path.

    Idempotent: a folder already built (with the same build version and seed)
    is returned as is. The folder is written next to ``out_dir`` and renamed
    into place, so an interrupted build never leaves a half-written model.
    """
    out = Path(out_dir)
    stamp = out / _STAMP
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("version") == _BUILD_VERSION and info.get("seed") == seed:
            return out
        raise FileExistsError(f"{out} holds a different tiny model build ({info}); remove it first")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a tiny model folder")

    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = _train_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=4096,
        padding_side="right",  # as many checkpoints ship; the captioner switches to left
        clean_up_tokenization_spaces=False,
    )
    size = {"shortest_edge": _MIN_PIXELS, "longest_edge": _MAX_PIXELS}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

    head_dim = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=tok.get_vocab_size(),
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                             "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            # larger than usual so that greedy decoding is not decided by ties
            initializer_range=0.5,
            **_TEXT,
        ),
        vision_config=dict(hidden_size=_TEXT["hidden_size"], initializer_range=0.5, **_VISION),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen.eos_token_id = ids["<|im_end|>"]
    gen.pad_token_id = ids["<|endoftext|>"]
    gen.bos_token_id = ids["<|endoftext|>"]
    gen.do_sample = False
    # A random model would often stop at once or emit only markup: make it say something.
    gen.min_new_tokens = 4
    gen.suppress_tokens = [ids[t] for t in SPECIAL_TOKENS if t != "<|im_end|>"]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        n_params = sum(p.numel() for p in model.parameters())
        (tmp / _STAMP).write_text(json.dumps({"version": _BUILD_VERSION, "seed": seed, "parameters": n_params}))
        if out.exists():
            out.rmdir()  # empty (checked above)
        try:
            os.replace(tmp, out)
        except OSError:
            if (out / _STAMP).exists():  # a concurrent build won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
