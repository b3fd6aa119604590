"""The `budgetlm` command line: one registry of subcommands, one error contract.

Each subcommand lives in its own module, which exposes

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> dict | None

`run` returns the command's result as a dict. With `--json` that dict is printed as one JSON object
on stdout (human-readable output then goes to stderr); without it the module prints for humans.
Modules are imported lazily so that `budgetlm plan --help` does not pay for importing torch.

Errors: a `BudgetError` (bad input) prints one line on stderr and exits with its code (2 by default);
argparse usage errors print one line and exit 2; anything unexpected prints one line and exits 1
(`BUDGETLM_DEBUG=1` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from budgetlm import __version__, ui
from budgetlm.config import BudgetError, refuse_torchrun

# name -> (module, one-line description, produces a result that --json can print)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "hardware": ("budgetlm.commands.hardware", "show local devices and the accelerator catalog", True),
    "plan": ("budgetlm.commands.plan", "plan memory, FLOPs, time and cost for a model, device and budget", True),
    "bench": ("budgetlm.commands.bench", "measure throughput and memory on this device; write calibration", True),
    "prepare": ("budgetlm.commands.prepare", "clean, tokenize and pack raw text into token shards", True),
    "train": ("budgetlm.commands.train", "pre-train a causal or masked model under a wall-clock budget", True),
    "eval": ("budgetlm.commands.eval", "loss, perplexity, bits per byte (LM), accuracy/F1 (classifier) or exact match/F1 (question answering)", True),
    "generate": ("budgetlm.commands.generate", "sample text from a trained causal model (one prompt, or a file of them in batches)", True),
    "finetune": ("budgetlm.commands.finetune", "fine-tune a model for classification, question answering or sequence to sequence", True),
    "classify": ("budgetlm.commands.classify", "classify texts with a fine-tuned model", True),
    "answer": ("budgetlm.commands.answer", "answer questions from a context with a question-answering run", True),
    "prune": ("budgetlm.commands.prune", "remove attention heads and MLP channels: a smaller dense model (or a magnitude-pruned baseline)", True),
    "export": ("budgetlm.commands.export", "export a model to Hugging Face format", True),
    "serve": ("budgetlm.commands.serve", "serve a model over HTTP (OpenAI-compatible completions and chat, classification)", False),
    "demo": ("budgetlm.commands.demo", "run the whole path on the built-in corpus", True),
}

# The commands that run across processes under torchrun; the others would do the whole job once per rank.
DISTRIBUTED = {"train"}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="budgetlm",
        description="Train the best language model your hardware and time budget allow.",
    )
    parser.add_argument("--version", action="version", version=f"budgetlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, description, has_json) in COMMANDS.items():
        p = sub.add_parser(name, help=description, description=description)
        p.set_defaults(_module=module)
        if has_json:
            p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        # Only the chosen command's module is imported (see _load_arguments).
    return parser


def _load_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Import only the chosen subcommand's module and let it add its flags, then parse."""
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    name = next((a for a in argv if not a.startswith("-")), None)
    if name in sub_action.choices:
        module = importlib.import_module(COMMANDS[name][0])
        module.add_arguments(sub_action.choices[name])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = _load_arguments(parser, argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        if args.command not in DISTRIBUTED:
            refuse_torchrun(f"budgetlm {args.command}")
        json_mode = bool(getattr(args, "json", False))
        ui.set_json_mode(json_mode)
        module = importlib.import_module(args._module)
        result = module.run(args)
        # under torchrun every rank runs this; one JSON object (rank 0's) is the command's answer
        if json_mode and os.environ.get("RANK", "0") == "0":
            sys.stdout.write(json.dumps(result if result is not None else {}, default=str) + "\n")
            sys.stdout.flush()
        return 0
    except BudgetError as e:
        sys.stderr.write(f"budgetlm: error: {e}\n")
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("budgetlm: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except (OSError, MemoryError) as e:
        if os.environ.get("BUDGETLM_DEBUG"):
            raise
        sys.stderr.write(f"budgetlm: error: {e}\n")
        return 1
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the CLI contract is "never a traceback"
        if os.environ.get("BUDGETLM_DEBUG"):
            raise
        sys.stderr.write(
            f"budgetlm: internal error: {type(e).__name__}: {e} "
            "(set BUDGETLM_DEBUG=1 for the traceback)\n"
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
