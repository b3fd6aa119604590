"""Shared by the server tests: a fake causal model, a real uvicorn server in a thread, a tiny run."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from budgetlm.serve import Token, create_app


class FakeLM:
    """Continues any prompt with the words of `script`, one word per step (the same for every row of
    a batch); counts concurrent steps. Every word has log-probability -1."""

    name, kind, max_context = "fake-lm", "causal", 32
    chat_template = None

    def __init__(self, script="hello world . END more words here"):
        self.script = script.split(" ")
        self.step_s = 0.0
        self.active = 0
        self.max_active = 0
        self.steps = 0  # forward passes run, all requests together
        self.rows: list[int] = []  # rows of each generation asked for
        self.closed = threading.Event()  # set when a generation ends, finished or stopped early
        self._guard = threading.Lock()

    def count_tokens(self, text):
        return len(text.split())

    def completion_steps(self, prompts, max_tokens, sampling):
        self.rows.append(len(prompts))
        try:
            for i, word in enumerate(self.script[:max_tokens]):
                with self._guard:  # the "forward pass" starts
                    self.active += 1
                    self.max_active = max(self.max_active, self.active)
                time.sleep(self.step_s)  # a forward pass takes time: gives other requests a chance to overlap
                with self._guard:
                    self.active -= 1
                    self.steps += 1
                yield [Token((" " if i else "") + word, word, -1.0, [(word, -1.0), ("other", -2.0)])
                       for _ in prompts]
        finally:
            self.closed.set()

    def prompt_logprobs(self, prompt, top):
        from budgetlm.serve.services import PromptToken

        out, offset = [], 0
        for i, word in enumerate(prompt.split(" ")):
            out.append(PromptToken(word, None if i == 0 else -0.5, None if i == 0 else [(word, -0.5)], offset))
            offset += len(word) + 1
        return out


@contextlib.contextmanager
def live_server(service, cfg, api_key: str = ""):
    """A real uvicorn server (the one `budgetlm serve` runs) in a thread, on a free port."""
    from budgetlm.serve import bind_socket, make_server

    sock = bind_socket("127.0.0.1", 0)
    server = make_server(create_app(service, cfg, api_key=api_key), cfg)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        assert thread.is_alive() and time.time() < deadline
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def tiny_causal_run(root: Path, name: str = "lm", seq: int = 32) -> Path:
    """A saved 2-layer, width-32 causal run with a small BPE tokenizer (random weights)."""
    import torch

    from budgetlm.data.tokenizer import save_tokenizer, train_tokenizer
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model
    from budgetlm.training.checkpoint import save_checkpoint
    from train_helpers import lm_meta

    texts = ["the cat sat on the mat", "a good film", "a bad film", "the dog ran"] * 20
    tok = train_tokenizer("bpe", texts, vocab_size=300)
    save_tokenizer(tok, root / "tok.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, max_seq_len=seq)
    save_checkpoint(root / name, 1, build_model(cfg), lm_meta(cfg), tokenizer_path=root / "tok.json")
    return root / name
