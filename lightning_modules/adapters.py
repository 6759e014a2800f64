"""Quantized loading (bitsandbytes 4-bit nf4 / 8-bit) and LoRA adapters (peft) for `SafetySignalLM`.

QLoRA keeps the base weights frozen in 4 bits and trains low-rank adapters, the `[CLS]` embedding
row (peft `trainable_token_indices`) and the safety head (our own `nn.Linear`, outside the peft
model, so it is always trainable and saved). bitsandbytes 0.50 runs 4-bit and 8-bit layers on CPU
too, which is how the presets are tested here.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, PreTrainedModel

Quantization = Literal["none", "4bit", "8bit"]
ADAPTER_DIR = "adapter"


@dataclass
class LoraOptions:
    """LoRA settings (peft `LoraConfig`); `target_modules="all-linear"` adapts every linear layer but the LM head."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bitsandbytes_config(quantization: Quantization, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """The `from_pretrained(quantization_config=...)` for a quantization mode (None for `none`)."""
    if quantization == "none":
        return None
    if quantization == "4bit":
        # The QLoRA paper's setting: NormalFloat4 with double quantization of the scales.
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be 'none', '4bit' or '8bit', got {quantization!r}")


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def add_lora(model: PreTrainedModel, options: LoraOptions, cls_id: int, gradient_checkpointing: bool) -> PeftModel:
    """Freeze `model`, add LoRA adapters and make the `[CLS]` embedding row trainable."""
    if is_quantized(model):
        # Upcasts the remaining (norm, embedding) weights to float32 for stable training and, with
        # gradient checkpointing, makes the embedding output require grad so adapters get gradients.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        # Only the new token's row is trained (a delta on top of the frozen embedding matrix);
        # with tied embeddings peft applies the same delta to the LM head.
        trainable_token_indices=[cls_id],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_names(module: torch.nn.Module) -> set[str]:
    return {name for name, param in module.named_parameters() if param.requires_grad}


def keep_trainable_weights(state_dict: dict[str, Any], trainable: set[str]) -> dict[str, Any]:
    """Checkpoint only what training changes (adapters, `[CLS]` row, head): the frozen base is reloaded.

    A 7B QLoRA checkpoint is then tens of MB instead of 4 GB, and it never holds bitsandbytes
    quantization state, which `load_state_dict` cannot restore into a freshly quantized model.
    """
    return {key: value for key, value in state_dict.items() if key in trainable}


def merged_model(model: PeftModel, load_full_precision_base: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """A plain HF model with the adapters folded in, for export.

    A quantized base is not merged in place (peft would requantize the merged weights, losing
    the adapter update to 4-bit rounding): the base is loaded again at full precision, the trained
    adapter weights are copied onto it, and that copy is merged. A full-precision base is merged
    in place (the live module then holds the merged weights, which compute the same function).
    """
    if not is_quantized(model.get_base_model()):
        return model.merge_and_unload()
    base = load_full_precision_base()
    copy_of_model = get_peft_model(base, copy.deepcopy(model.peft_config["default"]))
    # Same structure, same parameter names (only the frozen base layers differ in type).
    trained = {name: param for name, param in model.named_parameters() if param.requires_grad}
    rebuilt = dict(copy_of_model.named_parameters())
    missing = sorted(trained.keys() - rebuilt.keys())
    if missing:
        raise RuntimeError(f"the rebuilt model lacks {len(missing)} adapter weights, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, param in trained.items():
            rebuilt[name].copy_(param)
    return copy_of_model.merge_and_unload()

