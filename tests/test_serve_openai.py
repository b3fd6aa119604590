"""The OpenAI-compatible surface: OpenAI's own Python client against a real server (uvicorn in a
thread) holding a tiny real model, and the finer points of the formats against a fake model.

Run: .venv/bin/python -m pytest tests/test_serve_openai.py -q
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
from fastapi.testclient import TestClient  # noqa: E402

from budgetlm.config import BudgetError  # noqa: E402
from budgetlm.serve import ChatTemplate, ServeConfig, create_app, load_service, load_template  # noqa: E402
from serve_helpers import FakeLM, live_server, tiny_causal_run  # noqa: E402

TEMPLATE = {"message": "{role}: {content}\n", "assistant": "assistant:", "stop": ["\nuser:"]}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(OpenAI client, service) for a tiny causal run with a chat template, served by uvicorn."""
    root = tmp_path_factory.mktemp("openai")
    run = tiny_causal_run(root, seq=64)
    (run / "chat_template.json").write_text(json.dumps(TEMPLATE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    service = load_service(str(run))
    try:
        with live_server(service, ServeConfig(max_tokens_limit=64, graceful_timeout=1), api_key="k") as port:
            yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0), service
    finally:
        torch.set_num_threads(threads)


def greedy(service, prompt: str, n: int) -> str:
    from budgetlm.generate import complete

    return complete(service.model, service.tok, prompt, n, temperature=0).text


def model_logprobs(service, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1, straight from the model."""
    with torch.no_grad():
        logits, _ = service.model(torch.tensor([ids]))
    lp = torch.log_softmax(logits[0].float(), -1)
    return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


def test_models_list_and_retrieve(real):
    client, service = real
    assert [m.id for m in client.models.list().data] == [service.name]
    assert client.models.retrieve(service.name).owned_by == "budgetlm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_plain_and_streamed_completions_equal_budgetlm_generate(real):
    client, service = real
    want = greedy(service, "the cat", 8)
    c = client.completions.create(model=service.name, prompt="the cat", max_tokens=8, temperature=0)
    assert c.object == "text_completion" and c.model == service.name
    assert c.choices[0].text == want and c.choices[0].index == 0
    assert c.usage.prompt_tokens == service.count_tokens("the cat") and c.usage.completion_tokens <= 8
    chunks = list(client.completions.create(model=service.name, prompt="the cat", max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want
    assert chunks[-2].choices[0].finish_reason == c.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == c.usage.total_tokens


def test_n_and_prompt_lists_keep_openai_order_and_seeds(real):
    client, service = real
    kw = {"model": service.name, "max_tokens": 6, "temperature": 1.0, "seed": 11}
    two = client.completions.create(prompt="the dog", n=2, **kw)
    assert [ch.index for ch in two.choices] == [0, 1]
    one = client.completions.create(prompt="the dog", **kw)
    assert two.choices[0].text == one.choices[0].text  # choice j samples with seed + j
    assert two.choices[1].text == client.completions.create(prompt="the dog", **{**kw, "seed": 12}).choices[0].text
    prompts = ["the cat", "a good film", "the"]
    listed = client.completions.create(model=service.name, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [ch.index for ch in listed.choices] == list(range(6))
    assert [ch.text for ch in listed.choices] == [greedy(service, p, 6) for p in prompts for _ in range(2)]
    assert listed.usage.prompt_tokens == sum(service.count_tokens(p) for p in prompts)


def test_logprobs_are_the_models_and_echo_prepends_the_prompt(real):
    client, service = real
    c = client.completions.create(model=service.name, prompt="the cat", max_tokens=5, temperature=0, logprobs=2,
                                  echo=True)
    ch = c.choices[0]
    completion = greedy(service, "the cat", 5)
    assert ch.text == "the cat" + completion
    lp = ch.logprobs
    prompt_ids = service.tok.encode("the cat", add_special_tokens=False).ids
    ids = prompt_ids + service.tok.encode(completion, add_special_tokens=False).ids
    assert "".join(lp.tokens) == ch.text and len(lp.tokens) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(model_logprobs(service, ids).tolist(), abs=1e-4)
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    for t in range(len(prompt_ids), len(ids)):  # generated, greedy: the chosen token is the likeliest
        top = lp.top_logprobs[t]
        assert 2 <= len(top) <= 3 and lp.tokens[t] in top
        assert max(top.values()) == pytest.approx(lp.token_logprobs[t], abs=1e-6)
    streamed = client.completions.create(model=service.name, prompt="the cat", max_tokens=5, temperature=0,
                                         logprobs=2, stream=True)
    parts = [c.choices[0] for c in streamed]
    assert "".join(p.text for p in parts) == completion
    assert [t for p in parts if p.logprobs for t in p.logprobs.tokens] == lp.tokens[len(prompt_ids):]


def test_chat_completions_plain_and_streamed(real):
    client, service = real
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    prompt = "system: be brief\nuser: the cat\nassistant:"
    plain = client.completions.create(model=service.name, prompt=prompt, max_tokens=10, temperature=0,
                                      stop=["\nuser:"])
    chat = client.chat.completions.create(model=service.name, messages=messages, max_tokens=10, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == service.count_tokens(prompt)
    chunks = list(client.chat.completions.create(model=service.name, messages=messages, max_tokens=10,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    lp = client.chat.completions.create(model=service.name, messages=messages, max_tokens=4, temperature=0,
                                        logprobs=True, top_logprobs=3, n=2)
    assert [c.index for c in lp.choices] == [0, 1]
    content = lp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == lp.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in content)


def test_chat_without_a_template_is_400_naming_it(tmp_path):
    run = tiny_causal_run(tmp_path)
    with live_server(load_service(str(run)), ServeConfig(graceful_timeout=1)) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "hi"}])
        assert "no chat template" in e.value.message and e.value.param == "messages"
        assert client.completions.create(model="lm", prompt="the", max_tokens=2).choices[0].text is not None


COMPLETION_REFUSED = [
    ("best_of", {"best_of": 2}),
    ("suffix", {"suffix": " and"}),
    ("logit_bias", {"logit_bias": {"5": 10}}),
    ("presence_penalty", {"presence_penalty": 0.5}),
    ("frequency_penalty", {"frequency_penalty": -1.0}),
    ("top_k", {"extra_body": {"top_k": 5}}),
    ("tools", {"extra_body": {"tools": []}}),  # a chat parameter, unknown to completions
    ("stream_options.continuous_usage_stats", {"stream": True, "stream_options": {"continuous_usage_stats": True}}),
    ("stream_options", {"stream_options": {"include_usage": True}}),  # without stream
]
CHAT_REFUSED = [
    ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
    ("tool_choice", {"tool_choice": "auto"}),
    ("response_format", {"response_format": {"type": "json_object"}}),
    ("logit_bias", {"logit_bias": {"5": 10}}),
    ("presence_penalty", {"presence_penalty": 1.0}),
    ("frequency_penalty", {"frequency_penalty": 1.0}),
    ("parallel_tool_calls", {"parallel_tool_calls": True}),
    ("reasoning_effort", {"reasoning_effort": "low"}),
    ("metadata", {"metadata": {"a": "b"}}),
    ("store", {"store": True}),
    ("top_logprobs", {"top_logprobs": 2}),  # without logprobs
    ("messages[0].name", {"messages": [{"role": "user", "content": "hi", "name": "ann"}]}),
    ("messages[0].role", {"messages": [{"role": "tool", "content": "hi"}]}),
    ("messages[0].tool_call_id", {"messages": [{"role": "user", "content": "hi", "tool_call_id": "x"}]}),
    ("messages[0].content", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}),
    ("guided_json", {"extra_body": {"guided_json": {}}}),
]


@pytest.mark.parametrize("param,kwargs", COMPLETION_REFUSED, ids=[p for p, _ in COMPLETION_REFUSED])
def test_unsupported_completion_parameters_are_400_naming_them(real, param, kwargs):
    client, service = real
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**{"model": service.name, "prompt": "the", "max_tokens": 2, **kwargs})
    assert param in e.value.message and e.value.param == param, (e.value.message, e.value.param)


@pytest.mark.parametrize("param,kwargs", CHAT_REFUSED, ids=[p for p, _ in CHAT_REFUSED])
def test_unsupported_chat_parameters_are_400_naming_them(real, param, kwargs):
    client, service = real
    call = {"model": service.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**call)
    assert param in e.value.message, e.value.message


def test_neutral_values_of_unimplemented_parameters_are_accepted(real):
    client, service = real
    c = client.completions.create(model=service.name, prompt="the", max_tokens=2, best_of=1, suffix="", logit_bias={},
                                  presence_penalty=0, frequency_penalty=0.0, user="u1", temperature=None)
    assert len(c.choices) == 1
    chat = client.chat.completions.create(model=service.name, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2, response_format={"type": "text"}, presence_penalty=0,
                                          tool_choice="none", store=False, max_completion_tokens=2)
    assert chat.choices[0].finish_reason in ("stop", "length")


def test_a_wrong_model_name_is_404(real):
    client, _ = real
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="the", max_tokens=2)
    assert e.value.code == "model_not_found"


# -- formats, against the fake model ---------------------------------------------------------------


@pytest.fixture
def fake():
    return TestClient(create_app(FakeLM(), ServeConfig(max_tokens_limit=32, max_prompt_chars=100, max_batch=4)))


def _events(client, path: str, body: dict) -> list:
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        raw = "".join(r.iter_text())
    events = [e[len("data: "):] for e in raw.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_logprobs_stop_at_a_stop_string_and_echo_streams_first(fake):
    body = {"prompt": "say it", "max_tokens": 10, "stop": " .", "logprobs": 1, "echo": True}
    c = fake.post("/v1/completions", json=body).json()["choices"][0]
    assert c["text"] == "say ithello world" and c["finish_reason"] == "stop"
    lp = c["logprobs"]
    assert lp["tokens"] == ["say", "it", "hello", "world"]  # "." was cut with the stop string
    assert lp["token_logprobs"] == [None, -0.5, -1.0, -1.0]
    assert lp["text_offset"] == [0, 4, 6, 11]
    assert lp["top_logprobs"][2] == {"hello": -1.0, "other": -2.0}
    chunks = _events(fake, "/v1/completions", body)
    assert chunks[0]["choices"][0]["text"] == "say it"
    assert chunks[0]["choices"][0]["logprobs"]["tokens"] == ["say", "it"]
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == c["text"]
    assert [t for ch in chunks if ch["choices"][0]["logprobs"] for t in ch["choices"][0]["logprobs"]["tokens"]] \
        == lp["tokens"]


def test_prompt_list_and_n_decode_as_one_batch_in_order():
    lm = FakeLM()
    client = TestClient(create_app(lm, ServeConfig(max_batch=4)))
    body = {"prompt": ["a", "b c"], "n": 2, "max_tokens": 2}
    r = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3] and lm.rows == [4]
    assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
    chunks = _events(client, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    assert {ch["choices"][0]["index"] for ch in chunks[:-1]} == {0, 1, 2, 3}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    too_many = client.post("/v1/completions", json={"prompt": ["a", "b", "c"], "n": 2})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"


@pytest.mark.parametrize("body,status,needle", [
    ({"prompt": "x", "model": "other"}, 404, "not served here"),
    ({"prompt": [], "max_tokens": 2}, 422, "prompt"),
    ({"prompt": [1, 2, 3]}, 422, "prompt"),
    ({"prompt": "x", "logprobs": 6}, 422, "logprobs"),
    ({"prompt": "x", "n": 0}, 422, "n"),
    ({"prompt": "x", "t\u00f8p_k": 1}, 400, "t\\u00f8p_k"),  # a client's name, ASCII-escaped
    ({"prompt": "x", "best_of": float("nan")}, 400, "best_of"),
    ({"prompt": ["x", " ".join(["w"] * 40)]}, 400, "prompt 1 is 40 tokens"),
])
def test_completion_refusals(fake, body, status, needle):
    r = fake.post("/v1/completions", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert needle in (detail if isinstance(detail, str) else json.dumps(detail))
    error = r.json()["error"]  # OpenAI's error object, which its client libraries read
    assert error["type"] in ("invalid_request_error", "not_found_error") and error["message"]
    if status == 422:
        assert error["param"] == needle


def test_chat_with_a_fake_template_and_its_stops():
    lm = FakeLM("hello world END more")
    lm.chat_template = ChatTemplate("<{role}>{content}", "<assistant>", ["END"])
    seen = []
    steps = lm.completion_steps
    lm.completion_steps = lambda prompts, *a: (seen.append(prompts), steps(prompts, *a))[1]
    client = TestClient(create_app(lm, ServeConfig()))
    r = client.post("/v1/chat/completions", json={"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "q"}]}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello world "}
    assert body["choices"][0]["finish_reason"] == "stop" and seen == [["<system>s<user>q<assistant>"]]
    chunks = _events(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}], "n": 2})
    assert [ch["choices"][0]["delta"] for ch in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
    finals = [ch["choices"][0] for ch in chunks if ch["choices"][0]["finish_reason"]]
    assert sorted(f["index"] for f in finals) == [0, 1]
    assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 422


def test_chat_template_files(tmp_path):
    good = tmp_path / "t.json"
    good.write_text(json.dumps(TEMPLATE))
    t = load_template(good)
    assert t.render([("user", "{x} 50%")]) == "user: {x} 50%\nassistant:"  # content is data, not a format
    for bad, needle in [({"message": "{role}"}, "{content}"), ({"message": "{content} {other}"}, "nothing else"),
                        ({"message": "{content:>9}"}, "format spec"), ({"message": "{content}", "stop": [""]}, "stop"),
                        ({"message": "{content}", "extra": 1}, "nothing else"), ({"message": "{content"}, "format")]:
        good.write_text(json.dumps(bad))
        with pytest.raises(BudgetError, match="chat template") as e:
            load_template(good)
        assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BudgetError, match="does not exist"):
        load_template(tmp_path / "nope.json")


def test_serve_flag_chat_template_overrides_the_run(tmp_path):
    run = tiny_causal_run(tmp_path)
    assert load_service(str(run)).chat_template is None
    f = tmp_path / "chat.json"
    f.write_text(json.dumps({"message": "[{content}]"}))
    assert load_service(str(run), chat_template=str(f)).chat_template.message == "[{content}]"
    (run / "chat_template.json").write_text(json.dumps(TEMPLATE))
    assert load_service(str(run)).chat_template.stop == ["\nuser:"]
