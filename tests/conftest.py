from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.safety_signal_lm import SafetySignalLM  # noqa: E402


def tiny_overrides() -> dict:
    """The tiny random Llama of `conf/tiny.yaml` (SmolLM2's tokenizer, 2 layers, hidden 64)."""
    return yaml.safe_load((ROOT / "conf" / "tiny.yaml").read_text())["model"]["config_overrides"]


@pytest.fixture(scope="session")
def tiny_module() -> SafetySignalLM:
    module = SafetySignalLM(config_overrides=tiny_overrides())
    module.configure_model()
    return module.eval()


@pytest.fixture(scope="session")
def smollm2_module() -> SafetySignalLM:
    module = SafetySignalLM(model_name="smollm2-135m-instruct")
    module.configure_model()
    return module.eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: several threads only wait on each other, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
