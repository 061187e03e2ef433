"""Pure PyTorch/transformers core of M²Chat: prompt format, VLM encoder, M³Adapter,
gate, losses, adapter file format and tiny-model builders. Never imports ComfyUI or
the training module."""
