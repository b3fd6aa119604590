"""Chat templates: how /v1/chat/completions turns a list of messages into one prompt.

A template is a small JSON file, `chat_template.json`, in the run folder (or in the checkpoint folder,
beside tokenizer.json), or given with `serve --chat-template FILE`:

    {"message": "<|{role}|>\\n{content}\\n", "assistant": "<|assistant|>\\n", "stop": ["<|user|>"]}

- `message`: one message, a format string whose only fields are {role} and {content};
- `assistant` (optional): appended after the messages, where the model's answer begins;
- `stop` (optional, up to 4 strings of 1-64 characters): where the answer ends, added to each
  request's own stop strings.

The prompt is the messages one after another, then `assistant`. A model pre-trained on plain text
has no template, and its server answers chat requests with 400 (/v1/completions still works).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

from budgetlm.config import BudgetError

FILE_NAME = "chat_template.json"
FIELDS = frozenset({"role", "content"})


@dataclass
class ChatTemplate:
    message: str  # one message: a format string with the fields {role} and {content}
    assistant: str = ""  # appended after the messages: where the model's answer begins
    stop: list[str] = field(default_factory=list)  # strings that end the answer, added to each request's stop

    def render(self, messages: list[tuple[str, str]]) -> str:
        """The prompt for (role, content) messages."""
        return "".join(self.message.format(role=r, content=c) for r, c in messages) + self.assistant


def check_template(t: ChatTemplate, where: str) -> ChatTemplate:
    """One-line BudgetError for a template that could not render every request the same way."""
    try:
        parts = list(string.Formatter().parse(t.message))
    except ValueError as e:
        raise BudgetError(f"{where}: \"message\" is not a format string: {e}") from None
    names = {name for _, name, _, _ in parts if name is not None}
    if not names <= FIELDS or "content" not in names:
        raise BudgetError(f"{where}: \"message\" must use {{content}} (and may use {{role}}), nothing else; "
                          f"it uses {sorted(names)}")
    if any(spec or conv for _, name, spec, conv in parts if name is not None):
        raise BudgetError(f"{where}: \"message\" fields take no format spec or conversion ({{content}}, not {{content:...}})")
    if not isinstance(t.assistant, str) or not isinstance(t.stop, list) or len(t.stop) > 4 or \
            not all(isinstance(s, str) and 1 <= len(s) <= 64 for s in t.stop):
        raise BudgetError(f"{where}: \"assistant\" must be a string and \"stop\" at most 4 strings of 1-64 characters")
    return t


def load_template(path: str | Path) -> ChatTemplate:
    """A chat template file; one-line BudgetError for anything wrong with it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BudgetError(f"chat template {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BudgetError(f"cannot read chat template {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("message"), str) or set(data) - {"message", "assistant", "stop"}:
        raise BudgetError(f"chat template {path} must be a JSON object with \"message\" (a string) and optionally "
                          "\"assistant\" and \"stop\", nothing else")
    return check_template(ChatTemplate(data["message"], data.get("assistant", ""), data.get("stop", [])),
                          f"chat template {path}")


def find_template(meta) -> ChatTemplate | None:
    """The run's template: chat_template.json in the checkpoint folder, else in the run folder."""
    ckpt = Path(meta.path)
    for folder in (ckpt, ckpt.parent.parent):  # RUN/checkpoints/step_N, then RUN
        if (folder / FILE_NAME).is_file():
            return load_template(folder / FILE_NAME)
    return None
