"""The server's settings and the checks made on them before anything starts (no web framework here,
so `budgetlm serve --help` stays fast)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Literal

from budgetlm.config import BudgetError, check_ranges, ranged

API_KEY_ENV = "BUDGETLM_API_KEY"


@dataclass
class ServeConfig:
    model: str = ""  # run directory of a trained causal LM or fine-tuned classifier, or a local Hugging Face Llama folder
    host: str = "127.0.0.1"  # address to bind; anything but loopback requires an API key
    port: int = ranged(8000, 1, 65535)  # TCP port to listen on
    api_key: str = ""  # bearer token clients must send; empty = $BUDGETLM_API_KEY, or none on loopback
    quantize: Literal["none", "int8"] = "none"  # int8 = dynamic int8 quantization of linear layers (CPU)
    chat_template: str = ""  # JSON chat template for /v1/chat/completions; empty = the run's chat_template.json, if any
    max_body_bytes: int = ranged(1_000_000, 1)  # largest accepted request body in bytes (413 above)
    max_prompt_chars: int = ranged(16_000, 1)  # longest accepted prompt / classify text in characters
    max_tokens_limit: int = ranged(1024, 1)  # largest max_tokens a completion request may ask for
    max_batch: int = ranged(64, 1)  # most texts one /v1/classify request, or choices (prompts x n) one completion request, may carry
    max_concurrent: int = ranged(4, 1)  # requests answered at once; more get 503 + Retry-After
    read_timeout: float = ranged(10.0, 0, above=True)  # seconds to send a request's headers, or its body, or to idle between requests
    graceful_timeout: float = ranged(10.0, 0)  # seconds to let in-flight requests finish on shutdown


def check_config(cfg: ServeConfig) -> None:
    """BudgetError (one line) for a setting outside its range; run before any work starts."""
    check_ranges(cfg)


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(cfg: ServeConfig) -> str:
    """The key to enforce; refuses a non-loopback bind without one."""
    key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
    if not is_loopback(cfg.host) and not key:
        raise BudgetError(
            f"binding {cfg.host} exposes the model beyond this machine: set --api-key or "
            f"{API_KEY_ENV} (or bind 127.0.0.1)"
        )
    return key
