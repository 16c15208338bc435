"""``spr serve`` end to end: a real server process on 127.0.0.1, the official ``openai`` client, raw HTTP for bad input.

One ``spr serve`` subprocess per module (its own SPR_HOME with a catalogue holding three soft prompts
on a tiny BLOOM whose tokenizer has a chat template), started with ``--port 0 --token``. Requests
that are refused must not disturb the server or the other rows of a batch.
"""

from __future__ import annotations

import http.client as http_client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.demo import toymodels

pytestmark = [pytest.mark.slow, pytest.mark.backend_independent]

TOKEN = "test-token-123"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
SPR = str(Path(sys.executable).with_name("spr"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> dict[str, Any]:
    """SPR_HOME with team/a (3 tokens), team/b (7 tokens), team/coach@1,@2 (prod -> 1); a chat-capable base."""
    root = tmp_path_factory.mktemp("serve-http")
    base = toymodels.make_base_model(root / "base", arch="bloom", tokenizer_dir=tiny_tokenizer, pretrain_steps=150)
    config_path = base / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "SPR_HOME": str(root / "spr-home"), "SPR_ACTOR": "tester", "HF_HUB_OFFLINE": "1"}
    env.pop("SPR_DATABASE_URL", None)
    adapters = {
        "a": toymodels.make_adapter(base, root / "a", "PROMPT_TUNING", num_virtual_tokens=3, seed=1),
        "b": toymodels.make_adapter(base, root / "b", "PROMPT_TUNING", num_virtual_tokens=7, seed=2),
        "c1": toymodels.make_adapter(base, root / "c1", "P_TUNING", num_virtual_tokens=4, seed=3),
        "c2": toymodels.make_adapter(base, root / "c2", "PROMPT_TUNING", num_virtual_tokens=5, seed=4),
    }
    for key, name in (("a", "team/a"), ("b", "team/b"), ("c1", "team/coach"), ("c2", "team/coach")):
        run_spr(env, "publish", str(adapters[key]), "--name", name, "--base-model", str(base))
    run_spr(env, "alias", "set", "team/coach@1", "prod")
    return {"root": root, "base": base, "env": env}


def run_spr(env: dict[str, str], *argv: str) -> str:
    proc = subprocess.run([SPR, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def digest_of(env: dict[str, str], ref: str) -> str:
    return str(json.loads(run_spr(env, "show", ref, "--json"))["digest"])


@pytest.fixture(scope="module")
def server(home: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A real ``spr serve`` process; yields its base URL and its stderr lines so far."""
    cmd = [SPR, "serve", "--base-model", str(home["base"]), "team/a@1", "team/b@1", "team/coach@prod", "team/nope@1",
           "--port", "0", "--max-batch", "4", "--max-wait-ms", "300", "--token", TOKEN]
    proc = subprocess.Popen(cmd, env=home["env"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + 240
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if m:
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail("spr serve did not start:\n" + "".join(lines) + (proc.stderr.read() or ""))
    drain = threading.Thread(target=lambda: [lines.append(x) for x in proc.stderr], daemon=True)  # type: ignore[union-attr]
    drain.start()
    try:
        yield {"url": url, "lines": lines, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(server: dict[str, Any]) -> Any:
    import openai

    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=TOKEN, max_retries=0, timeout=120)


def http(server: dict[str, Any], method: str, path: str, body: bytes | dict[str, Any] | None = None,
         token: str | None = TOKEN) -> tuple[int, Any]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(server["url"] + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def raw_post(server: dict[str, Any], path: str, body: bytes, *, chunked: bool = False) -> tuple[int, Any]:
    """POST over a plain socket: the server may answer (413) and close before the body is all sent."""
    import socket

    host, port = server["url"].removeprefix("http://").split(":")
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\n{framing}\r\nConnection: close\r\n\r\n").encode()
    if chunked:  # no length announced: the server must count what arrives
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                        for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        try:
            sock.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early; the reply is still in the socket
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    status_line, _, rest = reply.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload)


def metric(server: dict[str, Any], name: str) -> float:
    status, text = http(server, "GET", "/metrics")
    assert status == 200
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert m, text
    return float(m.group(1))


# ---------------------------------------------------------------------------------------------


def test_refused_ref_is_reported_and_the_rest_served(server: dict[str, Any]) -> None:
    assert any("refused team/nope@1" in line for line in server["lines"])
    status, health = http(server, "GET", "/health", token=None)
    assert status == 200 and health["served"] == ["team/a@1", "team/b@1", "team/coach@prod"]
    assert health["refused"] == ["team/nope@1"]


def test_openai_client_models_and_completions(server: dict[str, Any], home: dict[str, Any]) -> None:
    api = client(server)
    assert sorted(m.id for m in api.models.list()) == ["team/a@1", "team/b@1", "team/coach@prod"]
    a = api.completions.create(model="team/a@1", prompt="Fall seven", max_tokens=8, temperature=0)
    b = api.completions.create(model="team/b@1", prompt="Fall seven", max_tokens=8, temperature=0)
    assert a.system_fingerprint == digest_of(home["env"], "team/a@1")
    assert b.system_fingerprint == digest_of(home["env"], "team/b@1")
    assert a.choices[0].text and a.choices[0].text != b.choices[0].text  # the soft prompt matters
    assert a.usage is not None and a.usage.completion_tokens <= 8 and a.usage.prompt_tokens > 0
    assert a.choices[0].finish_reason in ("stop", "length")
    again = api.completions.create(model="team/a@1", prompt="Fall seven", max_tokens=8, temperature=0)
    assert again.choices[0].text == a.choices[0].text  # greedy is repeatable


def test_two_soft_prompts_answered_in_one_batch(server: dict[str, Any]) -> None:
    api = client(server)
    results: dict[str, Any] = {}

    def ask(ref: str) -> None:
        results[ref] = api.completions.create(model=ref, prompt="I want you to act as a coach.", max_tokens=6, temperature=0)

    threads = [threading.Thread(target=ask, args=(ref,)) for ref in ("team/a@1", "team/b@1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sizes = [results[r].model_extra["spr"]["batch_size"] for r in ("team/a@1", "team/b@1")]
    assert sizes == [2, 2]
    assert metric(server, "spr_batch_size_max") >= 2


def test_streaming_equals_the_whole_answer(server: dict[str, Any], home: dict[str, Any]) -> None:
    api = client(server)
    whole = api.completions.create(model="team/b@1", prompt="The best time", max_tokens=12, temperature=0)
    pieces = []
    fingerprints = set()
    reasons = []
    for chunk in api.completions.create(model="team/b@1", prompt="The best time", max_tokens=12, temperature=0, stream=True):
        pieces.append(chunk.choices[0].text)
        fingerprints.add(chunk.system_fingerprint)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == whole.choices[0].text
    assert len([p for p in pieces if p]) > 1
    assert fingerprints == {digest_of(home["env"], "team/b@1")}
    assert reasons[-1] == whole.choices[0].finish_reason


def test_chat_completions(server: dict[str, Any]) -> None:
    api = client(server)
    messages = [{"role": "user", "content": "I need help getting up early."}]
    reply = api.chat.completions.create(model="team/a@1", messages=messages, max_tokens=8, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in api.chat.completions.create(model="team/a@1", messages=messages, max_tokens=8, temperature=0, stream=True)
    )
    assert streamed == reply.choices[0].message.content
    seeded = [api.chat.completions.create(model="team/a@1", messages=messages, max_tokens=8, temperature=1.0, seed=5)
              .choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "team/zzz@1", "prompt": "hi"}, 404, "served: team/a@1, team/b@1, team/coach@prod"),
        ({"model": "team/a@1", "prompt": "word " * 600}, 400, "context of 512 tokens"),
        ({"model": "team/a@1", "prompt": "hi", "max_tokens": -1}, 400, "'max_tokens' must be between 1 and"),
        ({"model": "team/a@1", "prompt": "hi", "max_tokens": 10**9}, 400, "'max_tokens' must be between 1 and"),
        ({"model": "team/a@1", "prompt": "hi", "max_tokens": "8"}, 400, "'max_tokens' must be an integer"),
        ({"model": "team/a@1", "prompt": "hi", "n": 2}, 400, "'n' must be 1"),
        ({"model": "team/a@1", "prompt": 42}, 400, "'prompt' is required and must be a string"),
        ({"model": "team/a@1", "prompt": "hi", "temperature": "hot"}, 400, "'temperature' must be a number"),
        ({"model": "team/a@1", "prompt": "hi", "stream": "yes"}, 400, "'stream' must be a boolean"),
        ({"prompt": "hi"}, 400, "'model' is required"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b"[" * 100 + b"]" * 100, 400, "JSON"),
        (b'{"model": "team/a@1", "prompt": "' + b"x" * (1024 * 1024 + 10) + b'"}', 413, "1 MiB"),
    ],
)
def test_bad_input_is_refused_with_a_message(server: dict[str, Any], body: Any, status: int, needle: str) -> None:
    if status == 413:
        got, answer = raw_post(server, "/v1/completions", body)
    else:
        got, answer = http(server, "POST", "/v1/completions", body)
    assert got == status, answer
    assert needle in answer["error"]["message"]
    assert http(server, "GET", "/health", token=None)[0] == 200


def test_body_over_1_mib_without_a_length_is_413(server: dict[str, Any]) -> None:
    body = b'{"model": "team/a@1", "prompt": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    status, answer = raw_post(server, "/v1/completions", body, chunked=True)
    assert status == 413 and "1 MiB" in answer["error"]["message"]
    status, answer = raw_post(server, "/v1/completions", b'{"model": "team/zzz@1", "prompt": "hi"}', chunked=True)
    assert status == 404  # a small chunked body is read normally


def test_tokens_are_required(server: dict[str, Any]) -> None:
    for token in (None, "wrong"):
        status, answer = http(server, "POST", "/v1/completions", {"model": "team/a@1", "prompt": "hi"}, token=token)
        assert status == 401 and "token" in answer["error"]["message"]
        assert http(server, "GET", "/v1/models", token=token)[0] == 401
        assert http(server, "POST", "/admin/reload", b"", token=token)[0] == 401
    import openai

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0).models.list()


def test_client_disconnect_mid_stream_frees_its_row(server: dict[str, Any]) -> None:
    before = metric(server, "spr_rows_cancelled_total")
    host, port = server["url"].removeprefix("http://").split(":")
    conn = http_client.HTTPConnection(host, int(port), timeout=60)
    body = json.dumps({"model": "team/a@1", "prompt": "Fall seven", "max_tokens": 480, "temperature": 0, "stream": True})
    conn.request("POST", "/v1/completions", body=body,
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    other: dict[str, Any] = {}
    mate = threading.Thread(target=lambda: other.update(
        r=client(server).completions.create(model="team/b@1", prompt="Fall seven", max_tokens=6, temperature=0)))
    mate.start()  # joins the same batch (max wait 300 ms)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read(6) == b"data: "  # the first event arrived
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    mate.join()
    assert other["r"].choices[0].text  # its batch mate is answered normally
    deadline = time.monotonic() + 60
    while metric(server, "spr_rows_cancelled_total") <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, "spr_rows_cancelled_total") == before + 1
    assert http(server, "GET", "/health", token=None)[0] == 200


def test_alias_moved_then_reload_switches_the_digest(server: dict[str, Any], home: dict[str, Any]) -> None:
    api = client(server)
    v1, v2 = digest_of(home["env"], "team/coach@1"), digest_of(home["env"], "team/coach@2")
    first = api.completions.create(model="team/coach@prod", prompt="Fall seven", max_tokens=6, temperature=0)
    assert first.system_fingerprint == v1
    run_spr(home["env"], "alias", "set", "team/coach@2", "prod")
    still = api.completions.create(model="team/coach@prod", prompt="Fall seven", max_tokens=6, temperature=0)
    assert still.system_fingerprint == v1  # resolved at start, until a reload
    status, answer = http(server, "POST", "/admin/reload", b"")
    assert status == 200, answer
    assert answer["changed"] == {"team/coach@prod": {"from": v1, "to": v2}}
    after = api.completions.create(model="team/coach@prod", prompt="Fall seven", max_tokens=6, temperature=0)
    assert after.system_fingerprint == v2
    assert next(m for m in api.models.list() if m.id == "team/coach@prod").model_extra["digest"] == v2
    status, text = http(server, "GET", "/metrics")
    assert f'spr_served_info{{model="team/coach@prod",version="team/coach@2",digest="{v2}"}} 1' in text
    assert re.search(r'^spr_requests_total\{model="team/coach@prod",status="200"\} [3-9]', text, re.M)
    assert re.search(r"^spr_queue_depth 0$", text, re.M)
    assert re.search(r'^spr_tokens_per_second\{window="all"\} [0-9.]+$', text, re.M)
