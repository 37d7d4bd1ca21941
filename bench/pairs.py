"""Named draft -> target pairs. The default works offline here (the Qwen pair comes from the
project's registry, Hub or pinned mirror); the others (hub=True) need Hugging Face Hub
access, and bench.run says so instead of starting when the Hub is unreachable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pair:
    draft: str
    target: str
    dtype: str = "bfloat16"  # per model below where they differ
    draft_dtype: str | None = None
    # the draft service's --quantization: weight-only int4 makes its 1-token steps ~2.6x
    # cheaper on CPU at nearly the same acceptance (docs/benchmarks.md)
    draft_quantization: str = "none"
    note: str = ""
    hub: bool = True  # the models come from the Hugging Face Hub only


PAIRS = {
    "qwen2.5-coder-0.5b-1.5b": Pair("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
                                    draft_quantization="int4",
                                    note="default; offline via the pinned mirror", hub=False),
    "gpt2-xl": Pair("openai-community/gpt2", "openai-community/gpt2-xl", dtype="float32",
                    note="Hub"),
    "gpt2-medium": Pair("distilbert/distilgpt2", "openai-community/gpt2-medium",
                        dtype="float32", note="Hub"),
    "pythia-1.4b": Pair("EleutherAI/pythia-70m-deduped", "EleutherAI/pythia-1.4b-deduped",
                        dtype="float16", draft_dtype="float32", note="Hub; fp16 needs a GPU"),
    "pythia-2.8b": Pair("EleutherAI/pythia-160m-deduped", "EleutherAI/pythia-2.8b-deduped",
                        dtype="float16", draft_dtype="float32", note="Hub; fp16 needs a GPU"),
    "llama-3.2-3b": Pair("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B",
                         note="Hub, gated (accept the license, set HF_TOKEN)"),
    "llama-3-8b": Pair("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "meta-llama/Meta-Llama-3-8B",
                       note="Hub, gated; vocabularies differ: the coordinator refuses this "
                            "pair unless a shared-vocabulary draft is used"),
}
DEFAULT_PAIR = "qwen2.5-coder-0.5b-1.5b"
