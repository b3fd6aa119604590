"""The HTTP layer with a fake model (fast), plus one test against a real tiny model when available."""

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from budgetlm.config import BudgetError  # noqa: E402
from budgetlm.serve import (  # noqa: E402
    ServeConfig,
    create_app,
    is_loopback,
    resolve_api_key,
    split_at_stop,
    stop_holdback,
)
from serve_helpers import FakeLM, live_server  # noqa: E402
from train_helpers import lm_meta  # noqa: E402


class FakeClassifier:
    name, kind, max_context = "fake-clf", "classifier", 64
    chat_template = None

    def count_tokens(self, text):
        return len(text.split())

    def classify(self, texts):
        return [
            {"label": "pos" if "good" in t else "neg", "probs": {"neg": 0.2, "pos": 0.8} if "good" in t else {"neg": 0.9, "pos": 0.1}}
            for t in texts
        ]


@pytest.fixture
def lm_client():
    return TestClient(create_app(FakeLM(), ServeConfig(max_tokens_limit=32, max_prompt_chars=100)))


def test_health_and_openapi(lm_client):
    r = lm_client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "model": "fake-lm", "kind": "causal"}
    schema = lm_client.get("/openapi.json").json()
    assert {"/v1/completions", "/v1/classify", "/health", "/metrics"} <= set(schema["paths"])


def test_completion_stops_at_stop_string_and_reports_usage(lm_client):
    r = lm_client.post("/v1/completions", json={"prompt": "say hi", "max_tokens": 10, "stop": [" ."]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "hello world"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_completion_length_limit(lm_client):
    body = lm_client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).json()
    assert body["choices"][0] == {"text": "hello world", "index": 0, "logprobs": None, "finish_reason": "length"}


def test_streaming_completion_is_sse_and_matches_non_streaming(lm_client):
    with lm_client.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 10, "stop": "END", "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = [e[len("data: "):] for e in raw.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 3  # text arrives in pieces, not at the end
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == "hello world . "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    full = lm_client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10, "stop": "END"}).json()
    assert full["choices"][0]["text"] == text


@pytest.mark.parametrize(
    "payload,status,needle",
    [
        ({"prompt": "x" * 101}, 422, "prompt"),
        ({"prompt": "x", "max_tokens": 33}, 422, "max_tokens"),
        ({"prompt": "x", "max_tokens": 0}, 422, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, 422, "temperature"),
        ({"max_tokens": 3}, 422, "prompt"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        ({"prompt": "x", "stop": ""}, 422, "stop"),
        ({"prompt": " ".join(["w"] * 40)}, 400, "context"),
    ],
)
def test_bad_completion_requests_are_4xx_with_a_message(lm_client, payload, status, needle):
    r = lm_client.post("/v1/completions", json=payload)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_bad_json_and_oversize_body(lm_client):
    r = lm_client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "json" in r.text.lower()
    big = TestClient(create_app(FakeLM(), ServeConfig(max_body_bytes=100)))
    r = big.post("/v1/completions", json={"prompt": "y" * 200})
    assert r.status_code == 413 and "100 bytes" in r.json()["detail"] == r.json()["error"]["message"]


def test_classify_endpoint_and_kind_mismatch(lm_client):
    client = TestClient(create_app(FakeClassifier(), ServeConfig(max_batch=3)))
    r = client.post("/v1/classify", json={"input": ["a good film", "dull"]})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["label"] for x in results] == ["pos", "neg"]
    assert results[0]["probs"]["pos"] == pytest.approx(0.8)
    assert client.post("/v1/classify", json={"input": "good"}).json()["results"][0]["label"] == "pos"
    assert client.post("/v1/classify", json={"input": ["a"] * 4}).status_code == 422
    assert client.post("/v1/classify", json={"input": []}).status_code == 422
    assert client.post("/v1/classify", json={"input": ["a", "y" * 20_000]}).status_code == 422
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 400 and "/v1/classify" in r.json()["detail"]
    r = lm_client.post("/v1/classify", json={"input": "x"})
    assert r.status_code == 400 and "/v1/completions" in r.json()["detail"]


def test_api_key_enforced():
    client = TestClient(create_app(FakeLM(), ServeConfig(), api_key="s3cret"))
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 401
    wrong = client.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    assert wrong.json()["error"]["code"] == "invalid_api_key"  # OpenAI's form, which its clients read
    ok = client.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/health").status_code == 200  # liveness stays open


def test_non_loopback_bind_requires_key(monkeypatch):
    monkeypatch.delenv("BUDGETLM_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert resolve_api_key(ServeConfig(host="127.0.0.1")) == ""
    with pytest.raises(BudgetError, match="api-key"):
        resolve_api_key(ServeConfig(host="0.0.0.0"))
    monkeypatch.setenv("BUDGETLM_API_KEY", "k")
    assert resolve_api_key(ServeConfig(host="0.0.0.0")) == "k"


def test_serve_cli_refuses_public_bind_without_key(monkeypatch, capsys, tmp_path):
    from budgetlm.cli import main

    monkeypatch.delenv("BUDGETLM_API_KEY", raising=False)
    assert main(["serve", "--model", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "api-key" in err and len(err.strip().splitlines()) == 1


def metric_samples(text: str) -> dict:
    """{(sample name, frozenset of labels): value} from the Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_and_tokens(lm_client):
    from prometheus_client.parser import text_string_to_metric_families

    lm_client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    lm_client.post("/v1/completions", json={"prompt": "x", "max_tokens": 0})
    lm_client.get("/v1/models/nope")
    r = lm_client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    got = metric_samples(r.text)
    path = ("path", "/v1/completions")
    assert got[("budgetlm_requests_total", frozenset({path, ("status", "200")}))] == 1
    assert got[("budgetlm_requests_total", frozenset({path, ("status", "422")}))] == 1
    assert got[("budgetlm_requests_total", frozenset({("path", "/v1/models/{model}"), ("status", "404")}))] == 1
    assert got[("budgetlm_generated_tokens_total", frozenset())] == 2
    assert got[("budgetlm_request_seconds_count", frozenset({path}))] == 2
    assert got[("budgetlm_request_seconds_bucket", frozenset({path, ("le", "+Inf")}))] == 2
    assert got[("budgetlm_first_token_seconds_count", frozenset({path}))] == 1
    assert got[("budgetlm_requests_in_flight", frozenset())] == 1  # the /metrics request itself
    kinds = {f.name: f.type for f in text_string_to_metric_families(r.text)}
    assert kinds["budgetlm_request_seconds"] == "histogram" and kinds["budgetlm_requests"] == "counter"


def test_concurrent_requests_do_not_overlap_model_steps():
    fake = FakeLM(" ".join(f"w{i}" for i in range(20)))
    fake.step_s = 0.002
    client = TestClient(create_app(fake, ServeConfig(max_concurrent=6)))
    results = []

    def go():
        r = client.post("/v1/completions", json={"prompt": "p", "max_tokens": 20})
        results.append(r.json()["choices"][0]["text"])

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [" ".join(f"w{i}" for i in range(20))] * 6
    assert fake.max_active == 1  # the lock let exactly one forward step run at a time


def test_stop_helpers():
    assert split_at_stop("abc END xyz", ["END", "xy"]) == ("abc ", True)
    assert split_at_stop("abc", ["z"]) == ("abc", False)
    assert stop_holdback("hello EN", ["END"]) == 2
    assert stop_holdback("hello", ["END"]) == 0


def test_create_app_without_a_config_uses_the_defaults():
    client = TestClient(create_app(FakeLM()))
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "hello world"
    assert client.post("/v1/completions", json={"prompt": "x" * 16_001}).status_code == 422


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', "temperature"),
        ("/v1/completions", b'{"prompt": "x", "top_p": NaN}', "top_p"),
        ("/v1/completions", b'{"prompt": "x", "temperature": Infinity}', "temperature"),
        ("/v1/completions", b'{"prompt": "x", "top_p": -Infinity}', "top_p"),
        ("/v1/completions", b'{"prompt": "x", "temperature": 1e999}', "temperature"),
        ("/v1/completions", b'{"prompt": "x\\ud800"}', "prompt"),
        ("/v1/completions", b'{"prompt": "x", "stop": "\\udc00"}', "stop"),
        ("/v1/completions", b'{"prompt": "x", "stop": ["ok", "a\\udfff"]}', "stop"),
        ("/v1/classify", b'{"input": ["fine", "\\ud83d"]}', "input"),
    ],
)
def test_non_finite_numbers_and_lone_surrogates_are_422(path, body, field):
    """Valid JSON to Python's reader, but not numbers or text a model can use: 422, never a 500."""
    service = FakeClassifier() if "classify" in path else FakeLM()
    client = TestClient(create_app(service, ServeConfig()), raise_server_exceptions=False)
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(field in e["loc"] for e in detail)
    assert any(word in e["msg"] for e in detail for word in ("finite", "surrogate", "unicode"))
    assert all(e["loc"][:2] == ["body", field] for e in detail)


def test_bytes_that_are_not_json_are_4xx(lm_client):
    for body in (b'{"prompt": "\xff"}', b"[" * 100_000, b"", b"null"):
        r = lm_client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (body[:10], r.status_code)


def test_api_key_is_checked_before_the_body_is_read():
    client = TestClient(create_app(FakeLM(), ServeConfig(max_body_bytes=100), api_key="s3cret"))
    headers = {"content-type": "application/json"}
    assert client.post("/v1/completions", content=b"{not json", headers=headers).status_code == 401
    assert client.post("/v1/completions", content=b"x" * 1000, headers=headers).status_code == 401  # not 413
    r = client.post("/v1/completions", content=b"{not json", headers={**headers, "X-API-Key": "s3cret"})
    assert r.status_code == 422
    r = client.post("/v1/completions", content=b"x" * 1000, headers={**headers, "Authorization": "Bearer s3cret"})
    assert r.status_code == 413
    assert client.get("/openapi.json").status_code == 200  # the docs stay open, like /health
    text = client.get("/metrics", headers={"X-API-Key": "s3cret"}).text
    key = ("budgetlm_requests_total", frozenset({("path", "/v1/completions"), ("status", "401")}))
    assert metric_samples(text)[key] == 2  # refusals are counted


@pytest.mark.parametrize("flag,value", [
    ("--max-body-bytes", "-1"), ("--max-tokens-limit", "0"), ("--max-batch", "0"), ("--graceful-timeout", "-1"),
    ("--max-prompt-chars", "0"), ("--max-concurrent", "0"), ("--read-timeout", "0"), ("--port", "0"),
    ("--port", "70000"), ("--graceful-timeout", "nan"), ("--read-timeout", "inf"),
])
def test_server_limits_are_checked_before_it_starts(flag, value, capsys, tmp_path):
    from budgetlm.cli import main

    assert main(["serve", "--model", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"budgetlm: error: {flag} must be") and err.count("\n") == 1, err
    with pytest.raises(BudgetError, match=flag):
        create_app(FakeLM(), ServeConfig(**{flag[2:].replace("-", "_"): float(value)}))


def test_a_port_in_use_is_one_line_exit_2(capsys, tmp_path):
    import socket

    from budgetlm.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tmp_path / "not-loaded"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"budgetlm: error: port {port} on 127.0.0.1 is in use (") and err.count("\n") == 1, err


def test_bind_errors_each_have_their_line():
    import errno

    from budgetlm.serve import bind_socket
    from budgetlm.serve.server import BIND_ERRORS, bind_error

    for code, needle in [(errno.EADDRINUSE, "in use"), (errno.EACCES, "permission"), (errno.EADDRNOTAVAIL, "not an address")]:
        assert code in BIND_ERRORS
        msg = str(bind_error(OSError(code, "x"), "10.1.2.3", 80))
        assert needle in msg and "\n" not in msg
    assert "cannot bind" in str(bind_error(OSError(errno.EINVAL, "Invalid argument"), "h", 1))
    with pytest.raises(BudgetError, match="not an address"):
        bind_socket("192.0.2.1", 8000)  # TEST-NET-1 (RFC 5737): never an address of this machine
    with pytest.raises(BudgetError, match="cannot bind"):
        bind_socket("no-such-host.invalid", 8000)


def _closed_within(conn, seconds: float) -> bool:
    """True when the server closes `conn` within `seconds` (whatever it sent first)."""
    conn.settimeout(seconds)
    try:
        while conn.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_silent_slow_and_idle_connections_are_closed():
    """Half-open connections: no head, a head one byte at a time, a body that stops, an idle keep-alive."""
    import socket

    with live_server(FakeLM(), ServeConfig(read_timeout=0.3, graceful_timeout=1)) as port:
        silent = socket.create_connection(("127.0.0.1", port))
        assert _closed_within(silent, 3)
        trickle = socket.create_connection(("127.0.0.1", port))
        t0 = time.time()
        with pytest.raises(OSError):  # broken pipe or reset once the server has closed it
            for byte in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" * 20:
                trickle.sendall(bytes([byte]))
                time.sleep(0.02)
        assert time.time() - t0 < 3
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"prompt\"")
        body.settimeout(3)
        assert body.recv(4096).startswith(b"HTTP/1.1 408")
        assert _closed_within(body, 3)
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(3)
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        assert _closed_within(idle, 3)
        for conn in (silent, trickle, body, idle):
            conn.close()


def test_busy_server_answers_503_with_retry_after():
    import httpx

    fake = FakeLM(" ".join(f"w{i}" for i in range(200)))
    fake.step_s = 0.01
    with live_server(fake, ServeConfig(max_concurrent=1, max_tokens_limit=200, graceful_timeout=1)) as port:
        url = f"http://127.0.0.1:{port}/v1/completions"
        with httpx.stream("POST", url, json={"prompt": "p", "max_tokens": 200, "stream": True}, timeout=10) as r:
            lines = r.iter_lines()  # kept: an iterator dropped here would close the stream
            next(lines)  # the first request is generating
            busy = httpx.post(url, json={"prompt": "p", "max_tokens": 2}, timeout=10)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert "busy" in busy.json()["detail"]
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200  # not a model call
        assert fake.closed.wait(5)
        assert httpx.post(url, json={"prompt": "p", "max_tokens": 2}, timeout=10).status_code == 200  # slot freed


def test_a_client_that_leaves_stops_its_generation():
    """Non-streaming and streaming: once the client is gone, no more forward passes run for it."""
    import socket

    import httpx

    for stream in (False, True):
        fake = FakeLM(" ".join(f"w{i}" for i in range(500)))
        fake.step_s = 0.01  # a whole completion would take 5 s
        with live_server(fake, ServeConfig(max_tokens_limit=500, graceful_timeout=1)) as port:
            body = json.dumps({"prompt": "p", "max_tokens": 500, "stream": stream}).encode()
            conn = socket.create_connection(("127.0.0.1", port))
            conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.2)
            conn.close()
            assert fake.closed.wait(3), "the generation went on after the client left"
            assert fake.steps < 100, fake.steps
            if not stream:
                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
                assert 'path="/v1/completions",status="499"' in metrics


def test_real_tiny_models_behind_the_api(tmp_path, capsys):
    """A causal run: greedy completion equals `budgetlm generate`; a fine-tuned run: /v1/classify."""
    torch = pytest.importorskip("torch")
    from budgetlm.cli import main
    from budgetlm.config import to_dict
    from budgetlm.data.tokenizer import save_tokenizer, train_tokenizer
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model
    from budgetlm.serve import load_service
    from budgetlm.training.checkpoint import save_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        texts = ["the cat sat on the mat", "a good film", "a bad film", "the dog ran"] * 20
        tok = train_tokenizer("bpe", texts, vocab_size=300)
        save_tokenizer(tok, tmp_path / "tok.json")
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, max_seq_len=32)
        save_checkpoint(tmp_path / "lm", 1, build_model(cfg), lm_meta(cfg),
                        tokenizer_path=tmp_path / "tok.json")
        client = TestClient(create_app(load_service(str(tmp_path / "lm")), ServeConfig()))
        body = client.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 6, "temperature": 0}).json()
        assert main(["generate", "--json", "--model", str(tmp_path / "lm"), "--prompt", "the cat",
                     "--max-new-tokens", "6", "--temperature", "0"]) == 0
        assert body["choices"][0]["text"] == json.loads(capsys.readouterr().out)["text"]
        with client.stream("POST", "/v1/completions", json={"prompt": "the cat", "max_tokens": 6,
                                                            "temperature": 0, "stream": True}) as r:
            raw = "".join(r.iter_text())
        streamed = "".join(json.loads(e[6:])["choices"][0]["text"] for e in raw.strip().split("\n\n")[:-1])
        assert streamed == body["choices"][0]["text"]
        # a top_p that underflows float32 must still sample the most likely token: 200
        tiny_p = client.post("/v1/completions", json={"prompt": "", "max_tokens": 2, "top_p": 5e-324})
        assert tiny_p.status_code == 200, tiny_p.text
        tiny_t = client.post("/v1/completions", json={"prompt": "the", "max_tokens": 2, "temperature": 1e-300})
        assert tiny_t.status_code == 200 and tiny_t.json()["choices"][0]["text"] == client.post(
            "/v1/completions", json={"prompt": "the", "max_tokens": 2, "temperature": 0}).json()["choices"][0]["text"]
        int8 = TestClient(create_app(load_service(str(tmp_path / "lm"), quantize="int8"), ServeConfig()))
        assert int8.post("/v1/completions", json={"prompt": "the", "max_tokens": 3}).status_code == 200

        # classifier: fine-tune the same kind of tiny masked run for a moment, then serve it
        mcfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, max_seq_len=32,
                           causal=False)
        save_checkpoint(tmp_path / "mlm", 1, build_model(mcfg), lm_meta(mcfg),
                        tokenizer_path=tmp_path / "tok.json")
        rows = [{"text": t, "label": "pos" if "good" in t else "neg"} for t in texts]
        (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert main(["finetune", "--model", str(tmp_path / "mlm"), "--train", str(tmp_path / "d.jsonl"),
                     "--val", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "clf"), "--epochs", "1",
                     "--device", "cpu", "--precision", "fp32"]) == 0
        capsys.readouterr()
        client = TestClient(create_app(load_service(str(tmp_path / "clf")), ServeConfig()))
        r = client.post("/v1/classify", json={"input": ["a good film", "the dog ran"]})
        assert r.status_code == 200
        for res in r.json()["results"]:
            assert res["label"] in ("neg", "pos") and sum(res["probs"].values()) == pytest.approx(1, abs=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_sigterm_lets_an_in_flight_stream_finish(tmp_path):
    """A real `budgetlm serve` process: SIGTERM mid-stream, the stream still ends with [DONE], exit 0."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    torch = pytest.importorskip("torch")
    from budgetlm.config import to_dict
    from budgetlm.data.tokenizer import save_tokenizer, train_tokenizer
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model
    from budgetlm.training.checkpoint import save_checkpoint

    tok = train_tokenizer("byte", None)
    save_tokenizer(tok, tmp_path / "tok.json")
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, max_seq_len=64)
    save_checkpoint(tmp_path / "lm", 1, build_model(cfg), lm_meta(cfg), tokenizer_path=tmp_path / "tok.json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "budgetlm", "serve", "--model", str(tmp_path / "lm"),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        chunks = []
        body = {"prompt": "a", "max_tokens": 150, "temperature": 1.0, "seed": 1, "stream": True}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as r:
            for i, line in enumerate(r.iter_lines()):
                if i == 0:
                    proc.send_signal(signal.SIGTERM)  # shut down while the stream is in flight
                if line:
                    chunks.append(line)
        assert chunks[-1] == "data: [DONE]"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_every_serve_flag_shows_its_default():
    import argparse

    from budgetlm.commands.serve import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for action in parser._actions:
        if action.dest != "help":
            assert "(default: " in action.help, action.dest
