"""The ``transformers`` caption backend: Qwen2-VL / Qwen2.5-VL from a local folder.

Runs the model inside the caption job, on the configured ``device`` (so the job
takes the ``gpu`` resource unless the device is the CPU), and loads only the
folder ``captions.transformers.model`` (the caption rule's input).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rare_objects.backends.captioning import (
    Backend,
    CaptionError,
    fill_defaults,
    register,
    short_error,
)

log = logging.getLogger("rare_objects.backends.captioning.transformers")

NAME = "transformers"


def fit_batch_size(
    free_bytes: int, per_item_bytes: int, max_batch: int, reserve_fraction: float = 0.2
) -> int:
    """Largest batch (1..max_batch) whose working memory fits in the free GPU memory.

    As the original did before generating: keep ``reserve_fraction`` of the free
    memory in reserve and divide the rest by the estimated memory per crop.
    """
    if per_item_bytes <= 0:
        return max(1, max_batch)
    usable = max(0.0, float(free_bytes) * (1.0 - reserve_fraction))
    return int(max(1, min(max_batch, usable // per_item_bytes)))


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class TransformersCaptioner:
    """Qwen2-VL / Qwen2.5-VL from a local ``save_pretrained`` folder.

    Batched greedy generation with left padding; bf16 (or fp16) on a GPU, fp32
    on the CPU. On a CUDA out-of-memory error the batch is halved and retried
    (down to one crop; a single crop that still does not fit is recorded as its
    error), and later batches keep the smaller size. With ``auto_batch`` on a GPU
    the batch size is first fitted to the free GPU memory (:func:`fit_batch_size`).
    """

    backend = NAME

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str,
        dtype: str | None = None,
        batch_size: int | None = None,
        auto_batch: bool | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_new_tokens: int | None = None,
        prompt: str | None = None,
        per_item_bytes: int | None = None,
        empty_cache_every: int = 100,
    ):
        """``device`` as the config's (auto, cpu, cuda, cuda:N); an argument left None
        takes the schema's default for ``captions`` (``prompt``, ``max_new_tokens``)
        or ``captions.transformers`` (the others)."""
        import torch
        from transformers import AutoProcessor

        try:
            from transformers import AutoModelForImageTextToText as _AutoModel
        except ImportError:  # older transformers
            from transformers import AutoModelForVision2Seq as _AutoModel

        from rare_objects.runtime import devices

        option = fill_defaults(
            NAME,
            dtype=dtype,
            batch_size=batch_size,
            auto_batch=auto_batch,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            max_new_tokens=max_new_tokens,
            prompt=prompt,
        )
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"caption model folder not found: {self.model_dir}")
        self.model_name = self.model_dir.name
        self.device = devices.resolve_device(device)
        # auto: bf16 on a GPU (Qwen2-VL's own precision; fp16 where bf16 is not supported)
        self.dtype = devices.resolve_dtype(option["dtype"], self.device, gpu_auto="bf16")
        self.batch_size = max(1, int(option["batch_size"]))
        self.auto_batch = option["auto_batch"]
        self.size = {
            "shortest_edge": int(option["min_pixels"]),
            "longest_edge": int(option["max_pixels"]),
        }
        self.max_new_tokens = int(option["max_new_tokens"])
        self.prompt = prompt = option["prompt"]
        self.empty_cache_every = empty_cache_every
        self._since_cache_clear = 0

        self.processor = AutoProcessor.from_pretrained(self.model_dir, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batched generation
        self.model = _AutoModel.from_pretrained(
            self.model_dir, local_files_only=True, dtype=self.dtype
        )
        self.model.to(self.device).eval()
        tok = self.processor.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        self.chat_text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

        if per_item_bytes is None:
            per_item_bytes = self.estimate_per_item_bytes()
        self.per_item_bytes = per_item_bytes
        if self.auto_batch and self.device.startswith("cuda"):
            free, _total = torch.cuda.mem_get_info(torch.device(self.device))
            fitted = fit_batch_size(free, self.per_item_bytes, self.batch_size)
            if fitted != self.batch_size:
                log.info(
                    "batch size %d -> %d to fit %.1f GiB free GPU memory",
                    self.batch_size,
                    fitted,
                    free / 2**30,
                )
            self.batch_size = fitted

    def estimate_per_item_bytes(self) -> int:
        """Rough working memory of one crop during generate: KV cache plus vision activations.

        Deliberately generous (x4): the OOM halving catches what it misses.
        """
        cfg = self.model.config
        text = getattr(cfg, "text_config", cfg)
        vision = getattr(cfg, "vision_config", None)
        elt = 2 if self.dtype in _half_dtypes() else 4
        patches = self.size["longest_edge"] // (14 * 14)
        tokens = patches // 4 + 64 + self.max_new_tokens
        layers = getattr(text, "num_hidden_layers", 28)
        kv_heads = getattr(text, "num_key_value_heads", None) or getattr(
            text, "num_attention_heads", 16
        )
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv = 2 * layers * kv_heads * head_dim * tokens * elt
        act = tokens * text.hidden_size * elt * 16
        vis = patches * (getattr(vision, "embed_dim", 1280) if vision else 1280) * elt * 16
        return int(4 * (kv + act + vis))

    # -- generation -----------------------------------------------------------------

    def _generate(self, images: list) -> list[str]:
        """Captions of one batch (raises on any error, the OOM included)."""
        import torch

        inputs = self.processor(
            text=[self.chat_text] * len(images),
            images=images,
            padding=True,
            return_tensors="pt",
            size=self.size,
        )
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(
            new, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [t.strip() for t in texts]

    def _release(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _caption_batch(self, images: list) -> list[str | Exception]:
        try:
            return list(self._generate(images))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a per-item result
            failure, oom = exc, _is_oom(exc)
        # Out of the except block: the traceback no longer pins the failed batch's tensors.
        if oom:
            self._release()
            if len(images) == 1:
                log.warning("out of GPU memory on a single crop; recorded as its error")
                return [CaptionError(f"out of GPU memory: {short_error(failure)}")]
            half = len(images) // 2
            if half < self.batch_size:
                log.warning("out of GPU memory at batch %d; halving to %d", len(images), half)
                self.batch_size = half
            del failure
            return self._caption_batch(images[:half]) + self._caption_batch(images[half:])
        if len(images) == 1:
            return [failure]
        # Another error: isolate the bad crop(s) by captioning one at a time.
        log.warning(
            "batch of %d failed (%s); retrying one by one", len(images), short_error(failure)
        )
        del failure
        return [r for im in images for r in self._caption_batch([im])]

    def caption(self, images: Sequence[Any]) -> list[str | Exception]:
        images = list(images)
        results: list[str | Exception] = []
        i = 0
        while i < len(images):
            n = self.batch_size  # may shrink during _caption_batch
            batch = images[i : i + n]
            results.extend(self._caption_batch(batch))
            i += len(batch)
            self._since_cache_clear += len(batch)
            if self.empty_cache_every and self._since_cache_clear >= self.empty_cache_every:
                self._release()  # as the original: clear the GPU cache every 100 crops
                self._since_cache_clear = 0
        return results


def _half_dtypes():
    import torch

    return (torch.float16, torch.bfloat16)


def _make(settings: dict, device: str | None) -> TransformersCaptioner:
    if device is None:
        raise ValueError("the transformers caption backend needs a device (its Backend.device)")
    own = settings[NAME]
    return TransformersCaptioner(
        own["model"],
        device=device,
        dtype=own["dtype"],
        batch_size=own["batch_size"],
        auto_batch=own["auto_batch"],
        min_pixels=own["min_pixels"],
        max_pixels=own["max_pixels"],
        max_new_tokens=settings["max_new_tokens"],
        prompt=settings["prompt"],
    )


def _resolve_device(requested: str) -> str:
    from rare_objects.runtime import devices

    return devices.resolve_device(requested)


register(
    Backend(
        name=NAME,
        make=_make,
        # the batch may shrink later: fitted to free GPU memory, halved on out-of-memory
        batch_size=lambda settings: settings[NAME]["batch_size"],
        needs_gpu=lambda device: device != "cpu",
        model_keys=("model",),
        device=_resolve_device,
    )
)
