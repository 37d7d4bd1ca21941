"""Explicit configuration: command-line flags with environment-variable defaults.

Nothing here runs at import time; each main() parses its flags into a frozen dataclass that
is passed down. Every flag FOO-BAR also reads SPECDEC_FOO_BAR when the flag is absent.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import platformdirs

# the --quantization schemes (specdec.quantize, specdec.fp16_weights)
QUANTIZATIONS = ("none", "int8", "int4", "fp16")


def env_name(flag: str) -> str:
    return "SPECDEC_" + flag.lstrip("-").upper().replace("-", "_")


class JoinRepeated(argparse.Action):
    """A repeatable flag whose values are joined with commas (`--x a --x b` = `--x a,b`);
    flags given on the command line replace the environment's value."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = f"_given_{self.dest}"
        if getattr(namespace, seen, False):
            values = f"{getattr(namespace, self.dest)},{values}"
        setattr(namespace, seen, True)
        setattr(namespace, self.dest, values)


class EnvDefaultsParser(argparse.ArgumentParser):
    """ArgumentParser whose options default to SPECDEC_* environment variables.

    The variable is read when the option is added, which happens inside main().
    """

    def add_option(self, flag: str, *, default=None, type=str, help: str = "",
                   secret: bool = False, **kw):
        """secret: --help says whether a value is set, never the value."""
        var = env_name(flag)
        if var in os.environ:
            default = type(os.environ[var])
        kw.setdefault("required", default is None and kw.get("action") in (None, JoinRepeated))
        shown = ("set" if default else "none") if secret else default
        return self.add_argument(
            flag, default=default, type=type, help=f"{help} [env {var}; default: {shown}]", **kw
        )


def default_cache_dir() -> str:
    return platformdirs.user_cache_dir("specdec")


def add_logging_options(p: EnvDefaultsParser) -> None:
    p.add_option("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                 help="log level")
    p.add_option("--log-format", default="auto", choices=["auto", "json", "console"],
                 help="log format; auto = console on a terminal, JSON otherwise")


def add_operations_options(p: EnvDefaultsParser, drain: str) -> None:
    """--shutdown-grace-s and --metrics-port, which every process has. drain: what the
    process does on SIGTERM before exiting."""
    p.add_option("--shutdown-grace-s", default=30.0, type=float,
                 help=f"on SIGTERM: report NOT_SERVING, {drain}, for at most this long")
    p.add_option("--metrics-port", default=-1, type=int,
                 help="serve Prometheus GET /metrics on this port; 0 = any free port (logged), "
                      "-1 = off")


@dataclass(frozen=True)
class ModelServiceConfig:
    """Configuration of a draft or target service."""

    model: str
    host: str
    port: int
    dtype: str
    device: str
    threads: int
    max_sessions: int
    session_ttl_s: float
    max_proposal_tokens: int
    max_batch_items: int
    max_cache_mb: float
    cache_dir: str
    warmup: bool
    log_level: str
    log_format: str
    shutdown_grace_s: float = 30.0
    metrics_port: int = -1
    quantization: str = "none"
    min_confidence: float = 0.0  # draft only
    proposer: str = "model"  # draft only
    ngram_max: int = 4  # draft only
    ngram_min: int = 2  # draft only
    draft_vocab: str = ""  # draft only: specdec.token_map.resolve
    tls_cert_file: str = ""  # (specdec.rpc.tls) empty = plaintext
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # set: mutual TLS, clients must show a certificate
    omp_wait_policy: str = "auto"  # (specdec.service_main.apply_omp_wait_policy)
    cuda_graphs: bool = True  # (specdec.static_pass) CUDA only


def add_tls_server_options(p: EnvDefaultsParser, what: str) -> None:
    """The certificate a process serves `what` with (specdec/rpc/tls.py)."""
    p.add_option("--tls-cert-file", default="",
                 help=f"PEM certificate (chain) for {what}; empty = plaintext")
    p.add_option("--tls-key-file", default="", help="PEM private key of --tls-cert-file")


def model_service_parser(prog: str, role: str, default_port: int) -> EnvDefaultsParser:
    p = EnvDefaultsParser(prog=prog, description=f"specdec {role} service (gRPC).")
    p.add_option("--model", help="registry name, local HF directory, .gguf file or Hub id",
                 default=None)
    p.add_option("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    p.add_option("--port", default=default_port, type=int, help="port to bind; 0 = any free")
    p.add_option("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                 help="weights' dtype; auto = bfloat16 on CUDA, float32 on CPU")
    p.add_option("--quantization", default="none", choices=list(QUANTIZATIONS),
                 help="weight-only quantization of the linear layers: int8 or int4 "
                      "weights, activations in --dtype; on CPU cheaper 1-token steps (a "
                      "draft), costlier multi-token passes; on CUDA int4 only, bf16, torch's "
                      "int4 kernel (not yet run on a GPU); fp16 (CPU): fp16 weights, float32 "
                      "activations (fbgemm; chosen for bf16 on CPUs without bf16 kernels) "
                      "(docs/deployment.md)")
    p.add_option("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N")
    p.add_option("--threads", default=0, type=int, help="torch CPU threads; 0 = torch's default")
    p.add_option("--omp-wait-policy", default="auto", choices=["auto", "passive", "active"],
                 help="how the OpenMP threads of torch's CPU kernels wait between parallel "
                      "regions (OMP_WAIT_POLICY, set before torch loads): passive threads "
                      "sleep, active ones spin; auto = passive unless OMP_WAIT_POLICY is set. "
                      "Spinning threads of an idle service take the cores a busy one needs "
                      "when they share a CPU (docs/benchmarks.md#fixed-cost-per-round)")
    p.add_option("--max-sessions", default=64, type=int,
                 help="most live sessions; more get RESOURCE_EXHAUSTED")
    p.add_option("--session-ttl-s", default=600.0, type=float,
                 help="idle sessions are closed after this many seconds")
    p.add_option("--max-proposal-tokens", default=32, type=int,
                 help="most draft tokens per Propose / per Verify item")
    p.add_option("--max-batch-items", default=64, type=int,
                 help="most sessions per batched call (one forward pass)")
    p.add_option("--max-cache-mb", default=4096.0, type=float,
                 help="KV cache memory sessions may reserve (each reserves its max_tokens); "
                      "past it new sessions get RESOURCE_EXHAUSTED; 0 = no bound")
    p.add_option("--cache-dir", default=default_cache_dir(),
                 help="where fetched and converted models are kept")
    if role == "draft":
        p.add_option("--min-confidence", default=0.0, type=float,
                     help="end a round's proposals early when the draft's most likely next "
                          "token has probability below this (as Hugging Face's "
                          "assistant_confidence_threshold, llama.cpp's --draft-p-min); the "
                          "first proposal is always made; 0 = off")
        p.add_option("--proposer", default="model", choices=["model", "ngram", "ngram+model"],
                     help="how tokens are proposed: the draft model; prompt lookup alone "
                          "(n-gram matches in the session's own tokens; the model is loaded "
                          "but never run); or prompt lookup when it finds a match and the "
                          "model otherwise")
        p.add_option("--draft-vocab", default="",
                     help="restrict the draft's output head to N frequent tokens (a number: "
                          "the N most frequent in the Python standard library's sources, "
                          "tokenized once and cached) or to the ids in a JSON file; it "
                          "proposes among them only, the target still verifies over every "
                          "token (exact, greedy and sampled); empty = the full vocabulary")
        p.add_option("--ngram-max", default=4, type=int,
                     help="prompt lookup: longest suffix of the session's tokens looked up")
        p.add_option("--ngram-min", default=2, type=int,
                     help="prompt lookup: shortest suffix looked up (shorter matches "
                          "propose more often, and worse)")
    p.add_option("--warmup", default=1, type=int, choices=[0, 1],
                 help="run warm-up passes before reporting SERVING")
    p.add_option("--cuda-graphs", default=1, type=int, choices=[0, 1],
                 help="on CUDA, decode steps and verify passes of up to 16 sessions x 9 rows "
                      "replay captured CUDA graphs (padded to fixed shapes; others run "
                      "eagerly; a failed capture logs a warning and turns them off); 0 = "
                      "eager always; ignored on CPU")
    add_tls_server_options(p, "the gRPC API")
    p.add_option("--tls-client-ca-file", default="",
                 help="PEM CA: every client (the coordinator) must show a certificate it "
                      "signed (mutual TLS); empty = any client")
    add_operations_options(p, drain="refuse new sessions (UNAVAILABLE), and serve the live "
                                    "ones until they close")
    add_logging_options(p)
    return p


def model_service_config(args: argparse.Namespace) -> ModelServiceConfig:
    return ModelServiceConfig(
        model=args.model, host=args.host, port=args.port, dtype=args.dtype, device=args.device,
        threads=args.threads, max_sessions=args.max_sessions, session_ttl_s=args.session_ttl_s,
        max_proposal_tokens=args.max_proposal_tokens, max_batch_items=args.max_batch_items,
        max_cache_mb=args.max_cache_mb, cache_dir=args.cache_dir, warmup=bool(args.warmup),
        log_level=args.log_level, log_format=args.log_format,
        shutdown_grace_s=args.shutdown_grace_s, metrics_port=args.metrics_port,
        quantization=args.quantization,
        min_confidence=getattr(args, "min_confidence", 0.0),
        proposer=getattr(args, "proposer", "model"),
        ngram_max=getattr(args, "ngram_max", 4), ngram_min=getattr(args, "ngram_min", 2),
        draft_vocab=getattr(args, "draft_vocab", ""),
        tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
        tls_client_ca_file=args.tls_client_ca_file, omp_wait_policy=args.omp_wait_policy,
        cuda_graphs=bool(args.cuda_graphs),
    )
