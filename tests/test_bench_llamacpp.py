"""bench/llamacpp.py (the llama.cpp peer) against stand-in executables that print what
llama.cpp's llama-completion and llama-speculative-simple print (their format strings, from
the llama.cpp sources), so finding, running and parsing are tested without a llama.cpp build."""

import os
import stat

import pytest

from bench.llamacpp import COMPLETION, SPECULATIVE, find_binaries, speculative, target_only

COMPLETION_OUT = """\
def f(): pass
llama_perf_sampler_print:    sampling time =      12.50 ms /   140 runs   (    0.09 ms per token, 11200.00 tokens per second)
llama_perf_context_print:        load time =     512.00 ms
llama_perf_context_print: prompt eval time =     250.00 ms /    12 tokens (   20.83 ms per token,    48.00 tokens per second)
llama_perf_context_print:        eval time =    3750.00 ms /   127 runs   (   29.53 ms per token,    33.87 tokens per second)
llama_perf_context_print:       total time =    4600.00 ms /   139 tokens
"""  # noqa: E501
SPECULATIVE_OUT = """\
encoded   12 tokens in    0.300 seconds, speed:   40.000 t/s
decoded  130 tokens in    6.200 seconds, speed:   20.968 t/s

n_draft   = 8
n_predict = 130
n_drafted = 150
n_accept  = 120
accept    = 80.000%
"""


def fake(directory, name: str, output: str, code: int = 0) -> None:
    path = directory / name
    (directory / f"{name}.out").write_text(output)
    path.write_text(f"#!/bin/sh\ncat '{directory / (name + '.out')}' >&2\nexit {code}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bin_dir(tmp_path):
    fake(tmp_path, COMPLETION, COMPLETION_OUT)
    fake(tmp_path, SPECULATIVE, SPECULATIVE_OUT)
    return tmp_path


def test_binaries_are_found_in_the_directory_given_or_llama_cpp_dir(bin_dir, tmp_path_factory,
                                                                    monkeypatch):
    monkeypatch.setenv("PATH", os.defpath)
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    empty = tmp_path_factory.mktemp("empty")
    assert find_binaries(str(bin_dir)) == bin_dir
    assert find_binaries(str(empty)) is None  # a directory given and wrong: not found
    assert find_binaries() is None
    monkeypatch.setenv("LLAMA_CPP_DIR", str(bin_dir))
    assert find_binaries() == bin_dir


def test_target_only_counts_generated_tokens_over_prompt_and_generation_time(bin_dir):
    run = target_only(bin_dir, bin_dir / "t.gguf", "prompt.txt", 128, 2)
    assert run == {"tokens": 128, "total_s": pytest.approx(4.0)}  # load time excluded


def test_speculative_reads_its_phases_and_acceptance(bin_dir):
    run = speculative(bin_dir, bin_dir / "t.gguf", bin_dir / "d.gguf", "prompt.txt", 128, 2)
    assert run == {"tokens": 130, "total_s": pytest.approx(6.5), "acceptance_rate": 0.8}


def test_a_failing_binary_raises_with_its_output(tmp_path):
    fake(tmp_path, COMPLETION, "error: unable to load model\n", code=1)
    with pytest.raises(RuntimeError, match="exited with 1: error: unable to load model"):
        target_only(tmp_path, tmp_path / "t.gguf", "prompt.txt", 128, 2)
