"""The one rule for where models run: the config's ``device`` and each model's precision.

``device: auto`` means a GPU when one is visible to the process (:func:`gpu_visible`),
else the CPU. The rule is asked twice, with the same answer:

- when the workflow is parsed (:func:`uses_gpu`, the model rules' ``gpu`` resource),
  where it must be cheap: importing torch in every job's parse is slow, so it looks
  only at the environment and the file system;
- when a job resolves its torch device (:func:`resolve_device`), where ``auto`` takes a
  GPU only when that same check finds one (and torch can use it), so a job never runs
  on a GPU it did not reserve through the ``gpu`` resource.

:func:`resolve_dtype` gives a model's torch dtype on the resolved device.
"""

from __future__ import annotations

import glob
import os
import shutil

# CUDA_VISIBLE_DEVICES values that hide every GPU from the process.
_NO_DEVICES = {"", "-1", "NoDevFiles"}


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, without importing torch.

    A GPU is visible when ``CUDA_VISIBLE_DEVICES`` does not hide every GPU and the
    machine shows one: its driver's ``nvidia-smi`` on PATH or a GPU device node
    (``/dev/nvidia0``, ...; a container given a GPU may have no nvidia-smi).
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in _NO_DEVICES:
        return False
    return shutil.which("nvidia-smi") is not None or bool(glob.glob("/dev/nvidia[0-9]*"))


def uses_gpu(device: str) -> bool:
    """Whether jobs with the config's ``device`` run on a GPU (their ``gpu`` resource)."""
    if device == "cpu":
        return False
    if device == "auto":
        return gpu_visible()
    return True


def resolve_device(requested: str = "auto") -> str:
    """Map the config's device to a torch device string.

    ``auto`` is ``cuda`` when :func:`gpu_visible` (the rule the workflow reserved the
    job's GPU by) and torch can use CUDA, else ``cpu``. ``cuda`` means the first GPU
    visible to this process: Slurm's --gres and a scheduler's CUDA_VISIBLE_DEVICES
    decide which physical GPU that is.
    """
    if requested == "cpu" or (requested == "auto" and not gpu_visible()):
        return "cpu"
    try:
        import torch
    except ImportError:  # an environment without torch (the CPU rules'): no GPU work there
        if requested == "auto":
            return "cpu"
        raise RuntimeError(
            f"device {requested!r} needs torch, which this environment lacks "
            "(envs/vision.yaml has it)"
        ) from None

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {requested!r} requested but CUDA is not available on {os.uname().nodename}"
            )
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {requested!r}: only {torch.cuda.device_count()} GPU(s) visible"
            )
    return requested


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_dtype(requested: str, device: str, gpu_auto: str = "fp16"):
    """The torch dtype of a config's precision (auto, fp32, fp16 or bf16) on ``device``.

    ``auto`` is fp32 on the CPU and ``gpu_auto`` on a GPU; an automatic bf16 falls
    back to fp16 on a GPU that cannot run bf16. Each model states its ``gpu_auto``:
    the precision it is published for (open_clip's fp16, Qwen2-VL's bf16).
    """
    try:
        import torch
    except ImportError:  # only the model rules ask, and their environment has torch
        raise RuntimeError(
            "a model's precision needs torch, which this environment lacks"
        ) from None

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use {', '.join(PRECISIONS)}")
    if requested != "auto":
        return dtypes[requested]
    if not str(device).startswith("cuda"):
        return torch.float32
    if gpu_auto == "bf16" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return dtypes[gpu_auto]
