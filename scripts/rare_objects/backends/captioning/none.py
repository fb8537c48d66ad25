"""The ``none`` caption backend: no VLM; every selected object gets the simple caption.

:func:`rare_objects.stages.captions.caption_objects` writes the simple
captions when the captioner is None; this backend needs no GPU and no file.
"""

from __future__ import annotations

from rare_objects.backends.captioning import Backend, register

register(
    Backend(
        name="none",
        make=lambda settings, device: None,
        batch_size=lambda settings: 1,  # no crop is ever cut
    )
)
