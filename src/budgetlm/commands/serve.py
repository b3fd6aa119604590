"""`budgetlm serve --model RUN`: a trained causal LM or fine-tuned classifier over HTTP
(see `budgetlm.serve` for the endpoints, limits and security)."""

from __future__ import annotations

import argparse

from budgetlm import ui
from budgetlm.config import BudgetError, add_dataclass_args, from_args
from budgetlm.serve.config import ServeConfig, check_config, resolve_api_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, ServeConfig)


def run(args: argparse.Namespace) -> None:
    cfg = from_args(ServeConfig, args)
    check_config(cfg)
    if not cfg.model:
        raise BudgetError("--model RUN is required (a trained or fine-tuned run directory)")
    key = resolve_api_key(cfg)
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise BudgetError("serve needs FastAPI, uvicorn and prometheus-client: pip install 'budgetlm[serve]'") from None
    from budgetlm.serve import bind_socket, create_app, load_service, serve_forever

    sock = bind_socket(cfg.host, cfg.port)  # a busy port fails now, not after loading the model
    try:
        service = load_service(cfg.model, quantize=cfg.quantize, chat_template=cfg.chat_template)
        app = create_app(service, cfg, api_key=key)
    except BaseException:
        sock.close()
        raise
    chat = ", with a chat template" if getattr(service, "chat_template", None) else ""
    ui.info(f"serving {service.kind} model [bold]{service.name}[/]{chat} on http://{cfg.host}:{cfg.port} "
            f"(docs at /docs; at most {cfg.max_concurrent} requests at once, model access serialised by one "
            "lock; Ctrl-C stops gracefully)")
    if key:
        ui.info("API key required: send 'Authorization: Bearer <key>'")
    serve_forever(app, cfg, sock)
    ui.info("server stopped")
    return None
