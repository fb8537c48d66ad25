"""A tiny Qwen2-VL for tests and the offline demo, random or briefly trained.

:func:`build_tiny_qwen2vl` writes a complete ``save_pretrained`` folder (model,
tokenizer, image and video processors, chat template, generation config) that
loads with ``from_pretrained(..., local_files_only=True)`` exactly like a real
Qwen2-VL checkpoint, so the real transformers captioning code path runs end to
end on a CPU in seconds.

With ``train_steps=0`` the weights are random and its captions are random word
pieces. With ``train_steps > 0`` it is trained through the model's own forward
and loss on (crop, caption) pairs of generated scenes
(:func:`rare_objects.demo.scenes.object_crops`, a random stream the demo images
never use), captions from the scene generator's grammar ("a red car", "a bicycle
with rainbow wheels"): it then describes demo crops in that grammar.

Everything is built locally: the byte-level BPE tokenizer is trained on a small
built-in corpus plus the grammar's captions (a grammar word is one token) with
the special tokens Qwen2-VL's chat template and processor need; the weights come
from ``torch.manual_seed(seed)``. The same seed, steps and thread count give the
same files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

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

# Small enough to train in a few minutes and run in seconds on a CPU (about 0.4M parameters).
_VOCAB_SIZE = 768
_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
_VISION = dict(
    depth=2,
    embed_dim=64,
    num_heads=4,
    mlp_ratio=2,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
# Small crops stay small: images are resized to between these areas (in pixels). The demo's
# captions.transformers.min_pixels / max_pixels must be these too (config.yaml).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 8
_STAMP = "tiny_qwen2vl.json"
# 3: more training scenes, crops with the box errors of a detector (TRAIN_JITTER)
VLM_BUILD_VERSION = 3
# Training crops: scenes drawn, and how far each side of a crop's box may move into the
# object / away from it (fractions of its size). The demo detector's boxes are often a
# fifth too tall or wide; a captioner trained on tight boxes calls a mascot in a box with
# road below it "a person in a green shirt".
TRAIN_SCENES = 1200
TRAIN_JITTER = (0.08, 0.25)


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
    from rare_objects.demo.scenes import grammar_captions

    tok.train_from_iterator((_CORPUS + grammar_captions()) * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def build_tiny_qwen2vl(
    out_dir: str | os.PathLike,
    seed: int = 0,
    train_steps: int = 0,
    n_scenes: int = TRAIN_SCENES,
    batch: int = 32,
    lr: float = 3e-3,
    threads: int = 1,
    jitter: tuple[float, float] = TRAIN_JITTER,
) -> Path:
    """Write a tiny Qwen2-VL to ``out_dir`` and return its path.

    ``train_steps=0`` saves the seeded random initialisation; otherwise the model is
    trained for that many AdamW steps of ``batch`` (crop, caption) pairs from
    ``n_scenes`` generated scenes (:func:`train_captioner`) on ``threads`` torch threads
    (equal builds need equal thread counts; for a model this small one thread is as fast
    as two, and much faster on a busy machine).

    Idempotent: a folder already built (with the same build version, seed and
    training settings) is returned as is. The folder is written next to ``out_dir``
    and renamed into place, so an interrupted build never leaves a half-written model.
    """
    out = Path(out_dir)
    stamp = out / _STAMP
    settings = {"version": VLM_BUILD_VERSION, "seed": seed, "train_steps": int(train_steps)}
    if train_steps:
        settings.update(
            {
                "n_scenes": int(n_scenes),
                "batch": int(batch),
                "lr": float(lr),
                "jitter": [float(j) for j in jitter],
            }
        )
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if all(info.get(k) == v for k, v in settings.items()):
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
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

    # A random model gets large weights so that greedy decoding is not decided by ties;
    # a trained one starts from the usual small ones.
    init_range = 0.02 if train_steps else 0.5
    head_dim = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=tok.get_vocab_size(),
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8],
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            initializer_range=init_range,
            **_TEXT,
        ),
        vision_config=dict(
            hidden_size=_TEXT["hidden_size"], initializer_range=init_range, **_VISION
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    summary: dict = {}
    with _deterministic_torch(threads):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
        if train_steps:
            summary = train_captioner(
                model,
                processor,
                seed,
                train_steps,
                n_scenes=n_scenes,
                batch=batch,
                lr=lr,
                jitter=jitter,
            )
    gen = model.generation_config
    gen.eos_token_id = ids["<|im_end|>"]
    gen.pad_token_id = ids["<|endoftext|>"]
    gen.bos_token_id = ids["<|endoftext|>"]
    gen.do_sample = False
    gen.suppress_tokens = [ids[t] for t in SPECIAL_TOKENS if t != "<|im_end|>"]
    if not train_steps:
        # A random model would often stop at once or emit only markup: make it say something.
        gen.min_new_tokens = 4

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        n_params = sum(p.numel() for p in model.parameters())
        info = {**settings, "threads": threads, "parameters": n_params, **summary}
        (tmp / _STAMP).write_text(json.dumps(info, indent=1) + "\n")
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


class _deterministic_torch:
    """Fixed thread count and deterministic kernels for a build; the previous settings after."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        import torch

        self._saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self._saved[0])
        torch.use_deterministic_algorithms(self._saved[1])
        return False


def _encode_pairs(processor, pairs, prompt: str):
    """Per pair: input ids (prompt, caption, end of turn), the caption's length in tokens, and the pixels."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    encoded = []
    for crop, caption in pairs:
        answer = caption + "<|im_end|>"
        enc = processor(text=[chat + answer], images=[crop], return_tensors="pt", size=size)
        ids = enc["input_ids"][0]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        n_answer = len(answer_ids)
        if ids[-n_answer:].tolist() != answer_ids:
            raise RuntimeError(f"caption {caption!r} does not tokenize the same inside the chat")
        # mm_token_type_ids marks the image tokens for the multimodal rotary positions
        encoded.append(
            (ids, enc["mm_token_type_ids"][0], n_answer, enc["pixel_values"], enc["image_grid_thw"])
        )
    return encoded


def _collate(items, pad_id: int):
    import torch

    length = max(len(ids) for ids, *_ in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), length), dtype=torch.long)
    labels = torch.full((len(items), length), -100, dtype=torch.long)
    token_types = torch.zeros((len(items), length), dtype=torch.long)
    for row, (ids, types, n_answer, _pix, _grid) in enumerate(items):  # right padding
        input_ids[row, : len(ids)] = ids
        token_types[row, : len(ids)] = types
        attention[row, : len(ids)] = 1
        labels[row, len(ids) - n_answer : len(ids)] = ids[-n_answer:]
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "mm_token_type_ids": token_types,
        "pixel_values": torch.cat([pix for *_, pix, _grid in items]),
        "image_grid_thw": torch.cat([grid for *_, grid in items]),
    }


def train_captioner(
    model,
    processor,
    seed: int,
    steps: int,
    n_scenes: int = TRAIN_SCENES,
    batch: int = 32,
    lr: float = 3e-3,
    prompt: str | None = None,
    jitter: tuple[float, float] = TRAIN_JITTER,
) -> dict:
    """Train ``model`` in place on crops of generated scenes and their grammar captions.

    Each crop's box is moved as a detector's would be: each side up to ``jitter[0]`` of
    the object's size into it and ``jitter[1]`` away from it
    (:func:`rare_objects.demo.scenes.object_crops`). The loss is the model's own (``model(**inputs, labels=labels).loss``) on the caption
    tokens and the end-of-turn token only; the prompt is the workflow's default caption
    prompt. AdamW with a one-cycle learning rate; batches drawn by a seeded generator.
    Returns the loss figures (timings go to the log: equal builds write equal files).
    """
    import torch

    from rare_objects.backends.captioning import DEFAULT_PROMPT
    from rare_objects.demo import scenes as demo_scenes

    t0 = time.perf_counter()
    pairs = [
        (crop, obj.caption)
        for crop, obj in demo_scenes.object_crops(
            seed, demo_scenes.STREAM_VLM, n_scenes, jitter=tuple(jitter)
        )
    ]
    encoded = _encode_pairs(processor, pairs, prompt or DEFAULT_PROMPT)
    prep_seconds = time.perf_counter() - t0
    pad_id = processor.tokenizer.pad_token_id

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(encoded), (batch,), generator=gen).tolist()
        loss = model(**_collate([encoded[i] for i in idx], pad_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == steps - 1:
            log.info("tiny Qwen2-VL step %d/%d: loss %.3f", step + 1, steps, losses[-1])
    model.eval()
    log.info(
        "tiny Qwen2-VL: %d (crop, caption) pairs prepared in %.0f s, %d steps trained in %.0f s",
        len(pairs),
        prep_seconds,
        steps,
        time.perf_counter() - t0 - prep_seconds,
    )
    return {
        "n_pairs": len(pairs),
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
    }
