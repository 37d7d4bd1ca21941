import json
import sys
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).parent))

from fake_int4_kernels import fake_mm, fake_pack  # noqa: E402

from specdec import fp16_weights  # noqa: E402
from specdec.logs import configure_logging  # noqa: E402
from specdec.models import load_model  # noqa: E402
from specdec.token_map import frequent_tokens  # noqa: E402
from stack import LoopThread, start_stack  # noqa: E402
from tiny_models import PROMPTS, make_model_dirs  # noqa: E402


def pytest_configure(config):
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    configure_logging("info", "console")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    return make_model_dirs(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def lms(model_dirs, tmp_path_factory):
    """Every tiny model, loaded through specdec's real loading path."""
    cache = str(tmp_path_factory.mktemp("cache"))
    lms = {name: load_model(str(path), "float32", "cpu", cache)
           for name, path in model_dirs.items()}
    for scheme in ("int8", "int4"):  # weight-only quantized drafts (specdec.quantize)
        lms[f"draft_perturbed_{scheme}"] = load_model(str(model_dirs["draft_perturbed"]),
                                                      "float32", "cpu", cache, scheme)
    # the target on fp16 weights with float32 activations (specdec.fp16_weights)
    if fp16_weights.available():  # (x86 torch builds)
        lms["target_fp16"] = load_model(str(model_dirs["target"]), "float32", "cpu", cache,
                                        "fp16")
    # the draft's head restricted to the half of the vocabulary most frequent in the prompts
    tokenizer = lms["target"].tokenizer
    ids = frequent_tokens(tokenizer, PROMPTS, lms["target"].vocab_size // 2)
    head = tmp_path_factory.mktemp("token-map") / "ids.json"
    head.write_text(json.dumps(ids))
    lms["draft_perturbed_top_half"] = load_model(str(model_dirs["draft_perturbed"]), "float32",
                                                 "cpu", cache, head_vocab=str(head))
    return lms


@pytest.fixture
def fake_cuda_kernels(monkeypatch):
    """specdec.quantize_cuda's CUDA int4 kernels replaced by CPU stand-ins (fake_int4_kernels)."""
    import specdec.quantize_cuda as qc
    monkeypatch.setattr(qc, "_pack", fake_pack)
    monkeypatch.setattr(qc, "_mm", fake_mm)


@pytest.fixture(scope="session")
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def stacks(loop, lms):
    """One running draft/target/coordinator stack per draft kind and proposer (the draft
    service's --proposer), started on first use."""
    started = {}

    def get(draft: str, proposer: str = "model"):
        if (draft, proposer) not in started:
            started[draft, proposer] = start_stack(loop, lms[draft], lms["target"],
                                                   draft_cfg={"proposer": proposer})
        return started[draft, proposer]

    yield get
    for stack in started.values():
        stack.stop()
