"""`SafetySignalLM`: a Hugging Face causal LM trained together with an explicit `[CLS]` safety classifier."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score

from lightning_modules.adapters import (
    ADAPTER_DIR, LoraOptions, Quantization, add_lora, bitsandbytes_config, keep_trainable_weights, merged_model,
    trainable_names,
)
from safety_signal.config import SAFETY_CONFIG_FILE, SafetyConfig
from safety_signal.decoding import Answer, DecodingConfig, SafetyGatedGenerator
from safety_signal.gate import GatePolicy
from safety_signal.layout import IGNORE_INDEX
from safety_signal.masks import Role, build_training_mask
from safety_signal.model import (
    CLS_TOKEN, HEAD_FILE, cls_token_id, eos_token_ids, load_causal_lm, load_tokenizer, mask_plan, resolve_model_path,
    weights_path,
)


def _submodule_state(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def _classifier_metrics(prefix: str) -> MetricCollection:
    return MetricCollection({"acc": BinaryAccuracy(), "f1": BinaryF1Score(), "auroc": BinaryAUROC()}, prefix=prefix)


class SafetySignalLM(L.LightningModule):
    """The LM plus `Linear(hidden, 1)` on the final-normed hidden state of `[CLS]` and its probes.

    Loss = LM cross-entropy on response tokens + `cls_weight` * BCE over every classifier token.
    The HF model is unmodified: the phase's 4D mask and position ids do all the work.

    Args:
        model_name: a hub id, a local HF folder, or a built-in name (`smollm2-135m-instruct`).
            An exported folder brings its trained head and its `safety_config.json`.
        safety: the settings training and inference share (mask phase, chat template, probe
            windows, guide text, threshold; see `SafetyConfig`). Default: the exported folder's,
            else `SafetyConfig()`. `use_cls: false` with `cls_weight: 0` trains the SFT baseline of
            the safety report (`conf/sft_baseline.yaml`): nothing attends `[CLS]`, so the LM learns
            the same data exactly as without the safety signal and is evaluated with plain `generate`.
        cls_weight: lambda in `L_lm + lambda * L_cls` (paper: 0.1 SFT from base, 0.01 otherwise).
        dtype: parameter dtype (`float32`, `bfloat16`, `float16`).
        attn_implementation: `sdpa` or `eager` (both take 4D additive masks; FlashAttention-2 does not).
        trust_remote_code: only if you trust the model repository.
        config_overrides: build a randomly initialised model from the overridden config (tiny stand-ins).
        lr / head_lr: AdamW learning rates for the LM and for the new head (`head_lr` defaults to `lr`).
        warmup_steps: linear warmup, then cosine decay to 10% over the run.
        gradient_checkpointing: trade compute for activation memory.
        gate, decoding: safety-gated generation for `predict` (defaults: `GatePolicy()`,
            `DecodingConfig()`).
        quantization: load the base weights with bitsandbytes, `4bit` (nf4, QLoRA) or `8bit`; needs `lora`.
        lora: train LoRA adapters + the `[CLS]` embedding row instead of all weights (peft); checkpoints
            then hold only the trained weights and the head.
    """

    def __init__(
        self,
        model_name: str = "smollm2-135m-instruct",
        safety: SafetyConfig | None = None,
        cls_weight: float = 0.1,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        config_overrides: dict[str, Any] | None = None,
        lr: float = 2e-5,
        head_lr: float | None = None,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        gradient_checkpointing: bool = False,
        gate: GatePolicy | None = None,
        decoding: DecodingConfig | None = None,
        quantization: Quantization = "none",
        lora: LoraOptions | None = None,
    ) -> None:
        super().__init__()
        # Stored as plain dicts (read by save_hyperparameters from this frame) so checkpoints
        # load with weights_only; dicts also come back here from `load_from_checkpoint`.
        if safety is None and (Path(resolve_model_path(model_name)) / SAFETY_CONFIG_FILE).exists():
            safety = SafetyConfig.load(resolve_model_path(model_name))
        safety = SafetyConfig.coerce(safety).to_dict()
        gate = (GatePolicy(**gate) if isinstance(gate, dict) else gate or GatePolicy()).to_dict()
        decoding = (DecodingConfig(**decoding) if isinstance(decoding, dict) else decoding or DecodingConfig()).to_dict()
        if isinstance(lora, dict):
            lora = LoraOptions(**lora)
        lora = lora.to_dict() if lora is not None else None
        if quantization != "none" and lora is None:
            raise ValueError(f"quantization={quantization!r} freezes the base weights: set `lora` to train adapters")
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager' (4D masks), got {attn_implementation!r}")
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(model_name, trust_remote_code)
        self.cls_id = cls_token_id(self.tokenizer)
        self.model: nn.Module | None = None
        self.head: nn.Linear | None = None
        self._hidden: torch.Tensor | None = None
        self._mask_plan = None  # how the model's layer types read a 4D mask (built with the model)
        self.train_metrics = _classifier_metrics("train/cls_")
        self.val_metrics = _classifier_metrics("val/cls_")
        self.val_probe_metrics = _classifier_metrics("val/probe_")
        self.test_metrics = _classifier_metrics("test/cls_")
        self._generator: SafetyGatedGenerator | None = None

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = load_causal_lm(
            hp.model_name,
            self.tokenizer,
            dtype=hp.dtype,
            attn_implementation=hp.attn_implementation,
            trust_remote_code=hp.trust_remote_code,
            config_overrides=hp.config_overrides,
            quantization_config=bitsandbytes_config(hp.quantization, getattr(torch, hp.dtype)),
        )
        self.model.train()  # from_pretrained returns eval mode; Lightning switches modes per stage from here
        if hp.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.config.use_cache = False
        if hp.lora is not None:
            self.model = add_lora(self.model, LoraOptions(**hp.lora), self.cls_id, hp.gradient_checkpointing)
            # Checkpoints hold only trained weights (see `on_save_checkpoint`); the frozen base is reloaded.
            self.strict_loading = False
        # Zero init: the classifier starts undecided (p = 0.5) instead of at a random verdict.
        self.head = nn.Linear(self.model.config.get_text_config().hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        exported_head = Path(resolve_model_path(hp.model_name)) / HEAD_FILE
        if exported_head.exists():  # a folder written by `export_pretrained` carries its trained head
            self.head.load_state_dict(load_file(exported_head))
        self.model.get_decoder().register_forward_hook(self._capture_hidden)

    def _capture_hidden(self, module: nn.Module, args: Any, output: Any) -> None:
        # The decoder's output is the final-normed hidden state the LM head reads; hooking it
        # keeps the full model forward (and any model-specific logit processing) untouched.
        self._hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        """Malicious logit(s) from final-normed hidden state(s) `[..., H]`."""
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    @property
    def safety(self) -> SafetyConfig:
        """The shared settings; their one home is `hparams.safety`, so checkpoints carry any change."""
        return SafetyConfig.coerce(self.hparams.safety)

    @safety.setter
    def safety(self, value: SafetyConfig) -> None:
        self.hparams.safety = SafetyConfig.coerce(value).to_dict()

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Any], lm_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """LM logits of the real block `[B, T - P, V]` and classifier logits `[B, T]`.

        `lm_logits=False` (a batch of classification-only rows): only the last position's LM logits
        `[B, 1, V]` are computed, which skips most of the vocabulary projection.
        """
        roles = batch["roles"]
        mask = build_training_mask(
            roles, batch["window_query"], batch["window_start"], batch["window_end"], self.safety.mask_phase,
            dtype=self.model.dtype,
        )
        n_real = roles.shape[1] - batch["num_probe_slots"]
        out, hidden = self.model_forward(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=batch["position_ids"],
            logits_to_keep=n_real if lm_logits else 1,
            use_cache=False,
        )
        return out.logits, self.classify(hidden)

    def model_forward(self, **model_kwargs: Any) -> tuple[Any, torch.Tensor]:
        """Call the HF model unchanged; also return its final-normed hidden states `[B, T, H]`.

        A 4D `attention_mask` is the project's full-attention mask; it becomes the mask of each
        layer type here (sliding-window layers read only their window, see `safety_signal.model.mask_plan`).
        """
        self._hidden = None
        mask = model_kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            if self._mask_plan is None:
                self._mask_plan = mask_plan(self.model)
            model_kwargs["attention_mask"] = self._mask_plan.apply(mask)
        out = self.model(**model_kwargs)
        hidden, self._hidden = self._hidden, None
        return out, hidden

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        targets = batch["lm_targets"][:, batch["num_probe_slots"] :]
        # A batch of classification-only rows has no LM target (known from the data, no host sync):
        # it only needs the classifier's hidden states, and `lm_loss` gives it zero.
        lm_logits, cls_logits = self(batch, lm_logits=not batch.get("classify_only", False))
        lm_loss = self.lm_loss(lm_logits, targets)
        labels = batch["cls_labels"]
        is_classifier = labels >= 0
        cls_loss = F.binary_cross_entropy_with_logits(cls_logits[is_classifier].float(), labels[is_classifier])
        return {
            "loss": lm_loss + self.hparams.cls_weight * cls_loss,
            "lm_loss": lm_loss,
            "cls_loss": cls_loss,
            "cls_logits": cls_logits,
        }

    @staticmethod
    def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy, mean over target tokens (same reduction as HF's causal LM loss)."""
        shift_targets = targets[:, 1:]
        if not (shift_targets != IGNORE_INDEX).any():
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), shift_targets.flatten(), ignore_index=IGNORE_INDEX
        )

    # ------------------------------------------------------------------ steps
    def on_fit_start(self) -> None:
        if self.trainer.precision == "bf16-mixed" and self.device.type == "cpu" and not native_cpu_bf16():
            rank_zero_warn("bf16-mixed on a CPU without AVX512-BF16 or AMX: bf16 is emulated here and can train slower "
                           "than float32; pass --trainer.precision 32-true")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.compute_losses(batch)
        n = batch["input_ids"].shape[0]
        self.log_dict(
            {"train/loss": out["loss"], "train/lm_loss": out["lm_loss"], "train/cls_loss": out["cls_loss"]},
            prog_bar=True, batch_size=n,
        )
        is_cls = batch["roles"] == Role.CLS
        self.train_metrics.update(out["cls_logits"][is_cls].detach().float().sigmoid(), batch["cls_labels"][is_cls].long())
        return out["loss"]

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics, self.val_probe_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics, None)

    def _eval_step(self, batch, stage: str, cls_metrics: MetricCollection, probe_metrics: MetricCollection | None):
        out = self.compute_losses(batch)
        n = batch["input_ids"].shape[0]
        self.log_dict(
            {f"{stage}/loss": out["loss"], f"{stage}/lm_loss": out["lm_loss"], f"{stage}/cls_loss": out["cls_loss"]},
            prog_bar=stage == "val", batch_size=n, sync_dist=True,
        )
        probs = out["cls_logits"].float().sigmoid()
        labels = batch["cls_labels"]
        is_cls = batch["roles"] == Role.CLS
        cls_metrics.update(probs[is_cls], labels[is_cls].long())
        if probe_metrics is not None:
            is_probe = (batch["roles"] == Role.PROBE) & (labels >= 0)
            probe_metrics.update(probs[is_probe], labels[is_probe].long())

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.log_dict(self.val_probe_metrics.compute())
        self.val_metrics.reset()
        self.val_probe_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    # ------------------------------------------------------------------ predict
    @property
    def generator(self) -> SafetyGatedGenerator:
        """The safety-gated generator configured by `gate` and `decoding` (built on first use)."""
        if self._generator is None:
            self._generator = SafetyGatedGenerator(
                self, GatePolicy(**self.hparams.gate), DecodingConfig(**self.hparams.decoding)
            )
        return self._generator

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[tuple[int, dict[str, Any]]]:
        """Gated generation for a batch of `{"index", "prompt"}`; returns `(index, record)` pairs."""
        answers: list[Answer] = self.generator.generate(batch["prompt"])
        return [
            (int(index), {"index": int(index), "prompt": prompt, **answer.to_record()})
            for index, prompt, answer in zip(batch["index"], batch["prompt"], answers)
        ]

    # ------------------------------------------------------------------ optim
    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Under FSDP each rank holds a gradient shard: only FSDP can compute the global norm
        # (Lightning's FSDP precision plugin refuses `gradient_clip_val` with the norm algorithm).
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        hp = self.hparams
        head_params = list(self.head.parameters())
        head_ids = {id(p) for p in head_params}
        lm_params = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        optimizer = torch.optim.AdamW(
            [
                {"params": lm_params, "lr": hp.lr, "weight_decay": hp.weight_decay},
                {"params": head_params, "lr": hp.head_lr or hp.lr, "weight_decay": 0.0},
            ],
            # On CPU torch's default AdamW updates tensor by tensor; the fused kernel is the same update in one pass.
            # (Lightning refuses gradient clipping with a fused optimizer under mixed precision.)
            fused=(self.device.type == "cpu" and "mixed" not in str(self.trainer.precision)) or None,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def schedule(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = (step - hp.warmup_steps) / max(1, total - hp.warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.lora is not None:
            checkpoint["state_dict"] = keep_trainable_weights(checkpoint["state_dict"], trainable_names(self))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # With LoRA the checkpoint holds only trained weights and loading is not strict: check them here.
        if self.hparams.lora is not None and self.model is not None:
            missing = trainable_names(self) - checkpoint["state_dict"].keys()
            if missing:
                raise KeyError(f"checkpoint lacks {len(missing)} trained weights, e.g. {sorted(missing)[:3]}")

    # ------------------------------------------------------------------ export
    def _load_full_precision_base(self) -> nn.Module:
        hp = self.hparams
        return load_causal_lm(
            weights_path(hp.model_name, hp.config_overrides, hp.trust_remote_code),
            self.tokenizer,
            dtype=hp.dtype,
            attn_implementation=hp.attn_implementation,
            trust_remote_code=hp.trust_remote_code,
        )

    def export_pretrained(self, out_dir: str | Path, full_state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """A standard HF folder (model + tokenizer with `[CLS]`) plus the head as safetensors.

        `full_state_dict`: this module's gathered weights (keys as in `state_dict()`), for a module
        whose own parameters are shards (FSDP; see `callbacks.export.ExportPretrained`).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if self.hparams.lora is not None:
            model.save_pretrained(out / ADAPTER_DIR)  # the adapters alone, loadable with peft
            model = merged_model(model, self._load_full_precision_base)  # plain weights for the HF folder
        # `[CLS]` is a classifier input, never an output: plain `generate` must not emit it.
        model.generation_config.suppress_tokens = [self.cls_id]
        if full_state_dict is None:
            model.save_pretrained(out)
            head_state = self.head.state_dict()
        else:
            model.save_pretrained(out, state_dict=_submodule_state(full_state_dict, "model."))
            head_state = _submodule_state(full_state_dict, "head.")
        self.tokenizer.save_pretrained(out)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in head_state.items()}, out / HEAD_FILE)
        # What decoding must share with training, so the export decodes exactly as it was trained.
        safety = replace(self.safety, eos_token_ids=self.safety.eos_token_ids or eos_token_ids(model, self.tokenizer))
        safety.save(out, cls_token=CLS_TOKEN, cls_token_id=self.cls_id, cls_weight=self.hparams.cls_weight)
        return out

    @classmethod
    def from_exported(cls, path: str | Path, **overrides: Any) -> "SafetySignalLM":
        """Load a folder written by `export_pretrained` (weights via safetensors only)."""
        path = Path(path)
        recorded = json.loads((path / SAFETY_CONFIG_FILE).read_text(encoding="utf-8"))
        overrides.setdefault("cls_weight", recorded.get("cls_weight", 0.1))
        module = cls(model_name=str(path), safety=SafetyConfig.from_dict(recorded), **overrides)
        module.configure_model()  # loads the head from the folder
        return module
