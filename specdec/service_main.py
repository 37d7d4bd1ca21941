"""Entry point of `python -m draft_service` / `python -m target_service`: flags first, then
the OpenMP wait policy, then torch (OpenMP reads OMP_WAIT_POLICY once, when torch loads it)."""

from __future__ import annotations

import importlib
import os

from .config import model_service_config, model_service_parser


def apply_omp_wait_policy(policy: str, environ=os.environ) -> None:
    """--omp-wait-policy: passive or active sets OMP_WAIT_POLICY; auto sets PASSIVE unless
    the environment already says. Must run before torch is imported."""
    if policy == "auto":
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    else:
        environ["OMP_WAIT_POLICY"] = policy.upper()


def run_service(prog: str, role: str, default_port: int, servicer_module: str) -> None:
    """servicer_module: the service's module, with start(cfg) (imported after the policy)."""
    cfg = model_service_config(model_service_parser(prog, role, default_port).parse_args())
    apply_omp_wait_policy(cfg.omp_wait_policy)
    from .rpc.model_service import main_model_service
    main_model_service(cfg, role, importlib.import_module(servicer_module).start)
