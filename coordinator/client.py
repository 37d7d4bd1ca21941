"""python -m coordinator.client --addr HOST:PORT [--k K --max-new-tokens N] "prompt"

Streams the generated text to stdout, then prints the request's statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import grpc

from specdec.v1 import generator_pb2, generator_pb2_grpc


def build_request(args: argparse.Namespace) -> generator_pb2.GenerateRequest:
    req = generator_pb2.GenerateRequest(
        prompt=args.prompt, max_new_tokens=args.max_new_tokens, num_speculative_tokens=args.k,
        temperature=args.temperature, top_k=args.top_k, stop=args.stop,
        token_grouping=generator_pb2.TokenGrouping.Value(
            f"TOKEN_GROUPING_{args.token_grouping.upper()}"))
    if args.k is None:
        req.ClearField("num_speculative_tokens")
    if args.top_p is not None:
        req.top_p = args.top_p
    if args.seed is not None:
        req.seed = args.seed
    return req


def message_tokens(msg: generator_pb2.GenerateResponse) -> tuple[list[int], str] | None:
    """The token ids and text a GenerateResponse carries (one token or a round's), or None
    for the final stats message."""
    if msg.HasField("token"):
        return [msg.token.id], msg.token.text
    if msg.HasField("tokens"):
        return list(msg.tokens.ids), msg.tokens.text
    return None


def stats_dict(stats: generator_pb2.GenerationStats) -> dict:
    d = {f.name: list(getattr(stats, f.name)) if f.is_repeated
         else getattr(stats, f.name) for f in stats.DESCRIPTOR.fields}
    d["finish_reason"] = generator_pb2.FinishReason.Name(stats.finish_reason)
    if stats.total_time_s > 0:
        d["tokens_per_s"] = stats.generated_tokens / stats.total_time_s
    return d


def generate(addr: str, req: generator_pb2.GenerateRequest, timeout_s: float | None = None,
             on_text=None, api_key: str | None = None) -> tuple[list[int], str, dict]:
    """Call Generate (with `api_key` as 'authorization: Bearer' metadata when given);
    returns (token ids, text, stats as a dict)."""
    ids, texts, stats = [], [], {}
    metadata = [("authorization", f"Bearer {api_key}")] if api_key else None
    with grpc.insecure_channel(addr) as channel:
        for msg in generator_pb2_grpc.GeneratorStub(channel).Generate(req, timeout=timeout_s,
                                                                      metadata=metadata):
            if (got := message_tokens(msg)) is not None:
                ids += got[0]
                texts.append(got[1])
                if on_text:
                    on_text(got[1])
            else:
                stats = stats_dict(msg.stats)
    return ids, "".join(texts), stats


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m coordinator.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--addr", default="127.0.0.1:50050", help="coordinator HOST:PORT")
    p.add_argument("--k", type=int, default=None,
                   help="draft tokens per round; 0 = target only; default: the coordinator's")
    p.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k cut")
    p.add_argument("--top-p", type=float, default=None, help="nucleus mass in (0, 1]")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--timeout-s", type=float, default=None, help="deadline for the whole call")
    p.add_argument("--token-grouping", choices=("token", "round"), default="token",
                   help="stream one token per message, or one message per round")
    p.add_argument("--json", action="store_true", help="print stats as one JSON line")
    p.add_argument("--api-key", default=os.environ.get("SPECDEC_API_KEY") or None,
                   help="the coordinator's API key, if it asks for one [env SPECDEC_API_KEY]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for name in ("k", "max_new_tokens"):  # uint32 on the wire
        if (getattr(args, name) or 0) < 0:
            print(f"error: --{name.replace('_', '-')} must be >= 0", file=sys.stderr)
            return 2
    try:
        _, _, stats = generate(args.addr, build_request(args), args.timeout_s,
                               on_text=lambda t: print(t, end="", flush=True),
                               api_key=args.api_key)
    except grpc.RpcError as e:
        print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print()
    if args.json:
        print(json.dumps(stats))
    else:
        print("---")
        for key, value in stats.items():
            print(f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
