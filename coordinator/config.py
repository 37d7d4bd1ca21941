"""The coordinator's flags (each also read from SPECDEC_<FLAG> when absent)."""

from __future__ import annotations

from dataclasses import dataclass

from specdec.config import (
    EnvDefaultsParser,
    JoinRepeated,
    add_logging_options,
    add_operations_options,
    add_tls_server_options,
    default_cache_dir,
)


@dataclass(frozen=True)
class CoordinatorConfig:
    draft: str  # comma-separated replica addresses (see --draft)
    target: str
    host: str
    port: int
    tokenizer: str
    cache_dir: str
    max_new_tokens_limit: int
    max_speculative_tokens: int
    default_k: int
    schedule: str
    rpc_timeout_s: float
    connect_timeout_s: float
    log_level: str
    log_format: str
    draft_timeout_ms: float = 0.0
    target_retry_s: float = 30.0
    shutdown_grace_s: float = 30.0
    metrics_port: int = -1
    http_port: int = -1
    http_timeout_s: float = 600.0
    served_model_name: str = ""
    api_key: str = ""  # comma-separated keys (see api/auth.py); empty = no key needed
    api_key_file: str = ""
    metrics_require_key: bool = False
    max_concurrent_requests: int = 0
    max_request_bytes: int = 64 * 2**20
    tls_cert_file: str = ""  # the coordinator's own gRPC and HTTP APIs; empty = plaintext
    tls_key_file: str = ""
    upstream_ca_file: str = ""  # set: TLS to the draft and target services
    upstream_cert_file: str = ""  # set: this coordinator's certificate (mutual TLS)
    upstream_key_file: str = ""
    upstream_tls_server_name: str = ""  # set: the name the services' certificates carry
    resolve_interval_s: float = 5.0
    adaptive_k: bool = True
    draft_ahead: bool = False
    round_streams: bool = True


def parser() -> EnvDefaultsParser:
    p = EnvDefaultsParser(prog="python -m coordinator",
                          description="specdec coordinator: serves the Generator API (gRPC).")
    replicas = ("; several replicas: comma-separated (or a repeated flag), or dns:///NAME:PORT "
                "for every address of NAME (a headless Service), re-resolved every "
                "--resolve-interval-s; dns://DNS_SERVER/NAME:PORT asks that server")
    p.add_option("--draft", help="draft service address HOST:PORT" + replicas, default=None,
                 action=JoinRepeated)
    p.add_option("--target", help="target service address HOST:PORT" + replicas, default=None,
                 action=JoinRepeated)
    p.add_option("--resolve-interval-s", default=5.0, type=float,
                 help="how often dns:/// addresses of --draft and --target are re-resolved")
    p.add_option("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    p.add_option("--port", default=50050, type=int, help="port to bind; 0 = any free")
    p.add_option("--tokenizer", default="",
                 help="tokenizer (registry name, directory, .gguf or Hub id); empty = the "
                      "target's --model, which must then be loadable here too")
    p.add_option("--cache-dir", default=default_cache_dir(), help="model cache directory")
    p.add_option("--max-new-tokens-limit", default=4096, type=int,
                 help="largest max_new_tokens a request may ask for")
    p.add_option("--max-request-bytes", default=64 * 2**20, type=int,
                 help="largest request the APIs read (a gRPC message, an HTTP body); larger "
                      "ones get RESOURCE_EXHAUSTED / 413 before they are parsed")
    p.add_option("--max-concurrent-requests", default=0, type=int,
                 help="most generations running at once (gRPC and HTTP together); more get "
                      "RESOURCE_EXHAUSTED / 429 with Retry-After; 0 = no cap (the target's "
                      "--max-sessions still bounds them)")
    add_speculation_options(p)
    p.add_option("--rpc-timeout-s", default=120.0, type=float,
                 help="deadline of each call to the draft and target services")
    p.add_option("--round-streams", default=1, type=int, choices=[0, 1],
                 help="1 (default): the round's Propose and Verify calls travel as messages "
                      "on one long-lived stream per service (less per-round overhead); 0: a "
                      "unary call each (services without the streams are used that way "
                      "anyway)")
    p.add_option("--connect-timeout-s", default=900.0, type=float,
                 help="how long to wait at start for both services to report SERVING")
    p.add_option("--draft-timeout-ms", default=0.0, type=float,
                 help="budget of each Propose call: a draft slower than this costs "
                      "the round its proposals (it runs target-only), never the request; "
                      "0 = 4x the draft's recent mean latency, at least 1 s")
    p.add_option("--target-retry-s", default=30.0, type=float,
                 help="how long a request waits for an unreachable target (re-opening its "
                      "session from the token history) before failing with UNAVAILABLE")
    add_operations_options(p, drain="refuse new requests, and let running ones finish")
    p.add_option("--http-port", default=-1, type=int,
                 help="serve the OpenAI-compatible HTTP API (/v1/completions, "
                      "/v1/chat/completions, /v1/models, /health, /metrics) on this port; "
                      "0 = any free port (logged), -1 = off")
    p.add_option("--http-timeout-s", default=600.0, type=float,
                 help="longest an HTTP request may run before 504")
    p.add_option("--served-model-name", default="",
                 help="the model name of the HTTP API; empty = the target's model name")
    add_api_key_options(p)
    add_tls_options(p)
    add_logging_options(p)
    return p


def add_api_key_options(p: EnvDefaultsParser) -> None:
    """Who may call the APIs (coordinator/api/auth.py)."""
    p.add_option("--api-key", default="", action=JoinRepeated, secret=True,
                 help="API key(s) a client must send as 'Authorization: Bearer KEY' (gRPC "
                      "metadata 'authorization') to Generate and /v1/*; comma-separated or "
                      "repeated; empty = no key needed. Prefer the environment or "
                      "--api-key-file: a flag's value shows in the process list")
    p.add_option("--api-key-file", default="",
                 help="a file of API keys, one a line (# comments), added to --api-key")
    p.add_option("--metrics-require-key", default=0, type=int, choices=[0, 1],
                 help="1: the HTTP API's /metrics also needs a key (the --metrics-port "
                      "endpoint is separate and never does); 0: open to Prometheus")


def add_tls_options(p: EnvDefaultsParser) -> None:
    """TLS on the coordinator's APIs and on its links to the services (specdec/rpc/tls.py)."""
    add_tls_server_options(p, "the gRPC and HTTP APIs")
    p.add_option("--upstream-ca-file", default="",
                 help="PEM CA that signed the draft's and target's certificates: the links "
                      "to them use TLS; empty = plaintext")
    p.add_option("--upstream-cert-file", default="",
                 help="PEM certificate this coordinator shows the services (mutual TLS, "
                      "for services started with --tls-client-ca-file)")
    p.add_option("--upstream-key-file", default="", help="PEM private key of "
                 "--upstream-cert-file")
    p.add_option("--upstream-tls-server-name", default="",
                 help="the name the services' certificates must carry, instead of the host "
                      "dialled (replicas found through dns:/// are dialled by address); "
                      "empty = the host of each address")


def add_speculation_options(p: EnvDefaultsParser) -> None:
    """How many tokens a round proposes (K) and how the rounds are scheduled."""
    p.add_option("--max-speculative-tokens", default=16, type=int,
                 help="largest num_speculative_tokens (K) a request may ask for (also capped by "
                      "the services' --max-proposal-tokens)")
    p.add_option("--default-k", default=8, type=int,
                 help="K for requests that leave num_speculative_tokens unset: with adaptive "
                      "K the most a round proposes; with --adaptive-k 0 the fixed K (4 suits "
                      "the Qwen pair on CPU)")
    p.add_option("--adaptive-k", default=1, type=int, choices=[0, 1],
                 help="1 (default): each round picks the K (up to the request's) with the "
                      "most expected tokens per second, from the session's acceptance and the "
                      "measured draft and verify costs at the current load, down to 0 where "
                      "speculation does not pay (docs/sampling.md); a request's "
                      "adaptive_k=false (or a seeded sampling request) keeps its K fixed. "
                      "0: K is fixed unless the request sets adaptive_k=true")
    p.add_option("--schedule", default="lockstep", choices=["lockstep", "pipelined"],
                 help="lockstep: all sessions move in rounds, one batched call at a time "
                      "(draft and target take turns; best when they share CPUs); pipelined: "
                      "each service's calls go out independently (overlap on separate GPUs)")
    p.add_option("--draft-ahead", default=0, type=int, choices=[0, 1],
                 help="1 (needs --schedule pipelined): while the target verifies a round, "
                      "the draft already proposes the next one, guessing that every proposal "
                      "is accepted; a wrong guess is rolled back (greedy requests only; "
                      "pays where draft and target have their own devices: "
                      "docs/sampling.md#drafting-ahead)")


def from_args(args) -> CoordinatorConfig:
    fields = CoordinatorConfig.__dataclass_fields__
    return CoordinatorConfig(**{f: getattr(args, f) for f in fields})
