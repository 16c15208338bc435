"""The web catalogue (`spr ui`) driven in-process through Starlette's TestClient, on a real catalogue.

What only a browser shows (rendering, links followed by clicking) is in ``test_web_browser.py``.
"""

from __future__ import annotations

import html.parser
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from adapter_files import prompt_config, write_prompt_adapter
from cli_support import spr

pytest.importorskip("starlette", reason="spr ui needs the [ui] extra (starlette)")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
from starlette.testclient import TestClient

from registry import catalogue
from registry.cli.inputs import parse_eval
from registry.web import create_app

# Attacker-controlled text: a script element, an attribute handler, and a value that tries to
# break out of an attribute (it lands in option values, hrefs and SVG attributes).
XSS = '<script>alert(1)</script><img src=x onerror=alert(2)>"\' onmouseover="alert(3)'


def _publish(tmp: Path, name: str, seed: int, **options: Any) -> str:
    config = options.pop("config", None)
    directory = write_prompt_adapter(tmp / f"{name.replace('/', '_')}-{seed}", seed=seed, config=config)
    result = catalogue.publish(directory, name, options=catalogue.PublishOptions(**options))
    return result.version.ref


@pytest.fixture
def populated(tmp_path: Path) -> dict[str, str]:
    """A catalogue with a lineage chain, an unverified import, aliases, evals and hostile text everywhere."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n{"text": "world"}\n')
    evil_config = prompt_config(
        prompt_tuning_init="TEXT", prompt_tuning_init_text="init " + XSS, tokenizer_name_or_path="tok" + XSS,
        base_model_name_or_path="evil/base" + XSS,
    )
    refs = {
        "root": _publish(tmp_path, "team/coach", 1, description="coach root " + XSS, tags={"team": XSS, XSS: "v"},
                         template="Q: {prompt}\n" + XSS + "\nA: ", dataset=data,
                         evals=[parse_eval("acc=0.50@held" + XSS)], training={"lr": 0.1, "loss_curve": [[1, 2.0], [2, 1.5], [3, 1.2]], "libraries": {"peft": XSS}}),
    }
    refs["child"] = _publish(tmp_path, "team/coach", 2, parent=refs["root"], evals=[parse_eval("acc=0.70@held" + XSS)])
    refs["evil"] = _publish(tmp_path, "team/evil", 3, config=evil_config, description=XSS, author="mallory" + XSS,
                            evals=[catalogue.EvalInput(metric="f1" + XSS, value=0.3, dataset_name=XSS, split=XSS)])
    refs["imported"] = _publish(tmp_path, "other/imported", 4, parent=refs["child"], lineage_verified=False,
                                tags={"source": "hub"})
    catalogue.set_alias(refs["child"], "prod", actor="alice")
    catalogue.set_alias(refs["root"], "staging", actor="bob")
    catalogue.add_eval(refs["child"], parse_eval("acc=0.75@held" + XSS))
    return refs


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False)


class _Scan(html.parser.HTMLParser):
    """Every element and attribute of a page, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def assert_no_injection(page: str) -> None:
    scan = _Scan()
    scan.feed(page)
    for tag, attrs in scan.tags:
        assert tag not in ("script", "img", "iframe", "object", "embed"), f"injected <{tag}> element"
        for name, value in attrs:
            assert not name.startswith("on"), f"injected {name}= attribute on <{tag}>"
            if name in ("href", "src", "action"):
                assert value is not None and not value.strip().lower().startswith(("javascript:", "data:")), value


PAGES = [
    "/", "/?q=coach", "/?tag=team", "/versions", "/a/team/coach", "/a/team/coach/evals", "/a/team/evil",
    "/a/team/evil/evals", "/v/team/coach@1", "/v/team/coach@2", "/v/team/evil@1", "/v/team/coach@2/lineage",
    "/v/other/imported@1/lineage", "/v/team/evil@1/lineage", "/audit", "/audit?check=1", "/versions?base_model=evil/base",
]


def test_every_page_renders_hostile_text_escaped(populated: dict[str, str], client: TestClient) -> None:
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 200, (url, response.text[:500])
        assert response.headers["content-type"].startswith("text/html")
        assert_no_injection(response.text)
    # The payloads are shown (escaped), not dropped: each field where they were stored.
    evil = client.get("/v/team/evil@1").text
    assert "init &lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in evil  # init text
    assert "tok&lt;script&gt;" in evil and "evil/base&lt;script&gt;" in evil and "mallory&lt;script&gt;" in evil
    root = client.get("/v/team/coach@1").text
    assert "Q: {prompt}\n&lt;script&gt;" in root  # template
    assert "coach root &lt;script&gt;" in root  # description
    assert "team=&lt;script&gt;" in root  # tag value
    assert "held&lt;script&gt;" in root  # eval data name
    assert "--- " not in root and "library_name: peft" in root  # the model card is there
    assert "peft=" not in root and "&lt;script&gt;alert(1)&lt;/script&gt;" in root
    svg = client.get("/v/team/evil@1/lineage.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert_no_injection(svg.text)
    assert "evil/base&lt;script&gt;" in svg.text


def test_json_twins_mirror_the_cli(populated: dict[str, str], client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    for cli_args, url in [
        (["show", "team/coach@prod"], "/api/v/team/coach@prod"),
        (["lineage", "other/imported@1"], "/api/v/other/imported@1/lineage"),
        (["versions", "team/coach"], "/api/a/team/coach"),
        (["list", "--all"], "/api/versions?limit=50"),
    ]:
        code, out, _ = spr(capsys, *cli_args, "--json")
        assert code == 0
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        assert response.json() == json.loads(out), url
    listing = client.get("/api/").json()
    assert listing["total"] == 3 and [a["name"] for a in listing["items"]] == ["imported", "coach", "evil"]
    coach = listing["items"][1]
    assert coach["latest_number"] == 2 and coach["aliases"] == {"prod": 2, "staging": 1} and coach["versions"] == 2
    assert [(s["metric"], s["value"]) for s in coach["latest_scores"]] == [("acc", 0.75)]
    assert client.get("/api").status_code == 200  # redirected to /api/


def test_adapter_list_filters_and_pages(populated: dict[str, str], client: TestClient) -> None:
    def names(**params: str) -> list[str]:
        response = client.get("/api/", params=params)
        assert response.status_code == 200, response.text
        return [f"{a['namespace']}/{a['name']}" for a in response.json()["items"]]

    assert names(q="COACH") == ["team/coach"]
    assert names(q="coach root") == []  # the description matched is the newest version's (v2 has none)
    assert names(namespace="team") == ["team/coach", "team/evil"]
    assert names(base_model="evil/base" + XSS) == ["team/evil"]
    assert names(method="prompt-tuning") == ["other/imported", "team/coach", "team/evil"]
    assert names(method="LORA") == []
    assert names(tag="source=hub") == ["other/imported"]
    assert names(tag="source") == ["other/imported"]
    assert names(tag="source=other") == []
    assert names(alias="prod") == ["team/coach"]
    assert names(q="%") == [] and names(q="_") == []  # LIKE wildcards are literal
    page = client.get("/api/", params={"limit": 2, "offset": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 1 and page["offset"] == 2
    html_page = client.get("/", params={"limit": 2}).text
    assert "1–2 of 3 adapters" in html_page and 'rel="next" href="/?limit=2&amp;offset=2"' in html_page
    for bad in ({"limit": "0"}, {"limit": "x"}, {"offset": "-1"}, {"offset": "9" * 5000}, {"limit": "²"},
                {"q": "x" * 201}, {"q": "a\x00b"}, {"tag": "=v"}):
        response = client.get("/", params=bad)
        assert response.status_code == 400, bad
        assert "Bad request" in response.text
    for url, bad in [("/versions", {"base_model": "a\x00b"}), ("/versions", {"dataset": "d" * 300}),
                     ("/audit", {"actor": "a\x00"}), ("/audit", {"adapter": "../x"}), ("/audit", {"limit": "501"})]:
        assert client.get(url, params=bad).status_code == 400, (url, bad)


def test_version_page_shows_what_spr_show_knows(populated: dict[str, str], client: TestClient) -> None:
    v = catalogue.get_version("team/coach@1")
    page = client.get("/v/team/coach@1").text
    for text in [v.digest, *(f.sha256 for f in v.files), "4 × 1 submodule(s), token dim 64", "staging",
                 "spr export team/coach@1 ./coach-v1", "spr pull team/coach@1 --to ./coach-v1",
                 v.dataset.digest if v.dataset else "?", "2 records", "0.5", "training loss"]:
        assert text in page, text
    child = client.get("/v/team/coach@prod").text
    assert 'href="/v/team/coach@1">team/coach@1</a>' in child  # the parent, linked
    imported = client.get("/v/other/imported@1").text
    assert "Lineage unverified" in imported


def test_lineage_graph_draws_the_chain(populated: dict[str, str], client: TestClient) -> None:
    page = client.get("/v/other/imported@1/lineage").text
    scan = _Scan()
    scan.feed(page)
    groups = [dict(attrs) for tag, attrs in scan.tags if tag == "g"]
    kinds = [g["class"] for g in groups]
    assert kinds.count("node node-unverified") == 1  # the imported version itself
    assert kinds.count("node node-version") == 2  # its parents team/coach@2 and @1
    assert "node node-base" in kinds and "node node-dataset" in kinds and "node node-evaldata" in kinds
    links = [dict(attrs)["href"] for tag, attrs in scan.tags if tag == "a"]
    assert "/v/team/coach@2" in links and "/v/team/coach@1" in links
    assert any(h.startswith("/versions?dataset=sha256%3A") for h in links)
    edges = [dict(attrs) for tag, attrs in scan.tags if tag == "line" and "edge" in (dict(attrs).get("class") or "")]
    assert [e.get("stroke-dasharray") for e in edges if e["class"] == "edge edge-unverified"] == ["6 4"]
    assert sum(e["class"] == "edge edge-parent" for e in edges) == 1


def test_lineage_of_a_depth_50_chain(tmp_path: Path, client: TestClient) -> None:
    ref = _publish(tmp_path, "deep/chain", 0)
    for i in range(1, 51):
        ref = _publish(tmp_path, "deep/chain", i, parent=ref)
    response = client.get("/v/deep/chain@51/lineage")
    assert response.status_code == 200
    assert response.text.count('class="node node-version"') == 50
    assert response.text.count('class="edge edge-parent"') == 50


def test_eval_history_plots_per_metric_and_dataset(populated: dict[str, str], client: TestClient) -> None:
    page = client.get("/a/team/coach/evals").text
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" class="plot"') == 1  # one metric, one dataset
    assert page.count('class="point"') == 3  # v1, v2, v2 again (a later score)
    assert "tester" in page  # who recorded each
    points = client.get("/api/a/team/coach/evals").json()
    assert [(p["number"], p["value"]) for p in points] == [(1, 0.5), (2, 0.7), (2, 0.75)]


def test_audit_page_filters_and_runs_a_no_rehash_audit(populated: dict[str, str], client: TestClient) -> None:
    everything = client.get("/api/audit").json()
    assert everything["total"] >= 6 and everything["items"][0]["id"] > everything["items"][-1]["id"]
    moves = client.get("/api/audit", params={"actor": "alice"}).json()
    assert moves["total"] == 1 and moves["items"][0]["action"] == "alias-set" and moves["items"][0]["details"]["to"] == 2
    about = client.get("/api/audit", params={"adapter": "team/coach"}).json()
    assert {e["subject"].split("@")[0] for e in about["items"]} == {"team/coach"}
    one = client.get("/api/audit", params={"adapter": "team/coach@1"}).json()
    assert {e["subject"] for e in one["items"]} == {"team/coach@1"}
    prod = client.get("/api/audit", params={"adapter": "team/coach@prod"}).json()  # the alias's moves
    assert prod["total"] == 1 and prod["items"][0]["details"]["alias"] == "prod"
    page = client.get("/audit", params={"adapter": "team/coach"}).text
    assert 'href="/audit?adapter=team%2Fcoach%40prod"' in page  # each subject links to its own filter
    assert client.get("/audit", params={"adapter": "team/coach@prod"}).status_code == 200
    assert client.get("/api/audit", params={"adapter": "../x"}).status_code == 400
    clean = client.get("/api/audit", params={"check": "1"}).json()["audit"]
    assert clean["ok"] and clean["errors"] == 0
    # Damage: a stored blob vanishes. The no-rehash audit sees it.
    v = catalogue.get_version("team/coach@1")
    blob = next(Path(os.environ["SPR_HOME"]).rglob(v.files[0].sha256))
    blob.unlink()
    page = client.get("/audit?check=1").text
    assert "damage found" in page and v.files[0].sha256[:12] in page
    assert "Run an audit now" in client.get("/audit").text  # only on request


@pytest.mark.parametrize("url", [
    "/v/team/coach@0", "/v/team/coach@", "/v/team/..@1", "/v/team/coach@sha256:zz", "/v/team/coach@latest@2",
    "/v/team/co%00ach@1", "/v/team/" + "a" * 400, "/v/team/coach@99", "/v/team/nope@1", "/v/team/coach@nope",
    "/v/-x/coach", "/v/team/coach@%C2%B2", "/a/team/..", "/a/team/nope", "/a/team/nope/evals",
    "/v/team/coach@1/lineage/x", "/v/team/coach@99/lineage", "/v/team/coach@99/lineage.svg",
])
def test_bad_refs_are_404_pages(populated: dict[str, str], client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 404, response.text[:300]
    assert "Not found" in response.text
    api = client.get("/api" + url)
    assert api.status_code == 404 and api.json()["error"] == "Not found"


def test_security_headers_and_no_write_endpoints(populated: dict[str, str], client: TestClient) -> None:
    for url in ["/", "/v/team/coach@1", "/static/style.css", "/nope", "/api/", "/v/team/coach@1/lineage.svg"]:
        headers = client.get(url).headers
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    for url in ["/", "/a/team/coach", "/v/team/coach@1", "/audit", "/api/", "/api/v/team/coach@1"]:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert client.request(method, url).status_code == 405, (method, url)
    assert client.get("/static/style.css").status_code == 200


def test_token_guards_every_page(populated: dict[str, str]) -> None:
    token = "s3cret-token-value"
    client = TestClient(create_app(token=token), raise_server_exceptions=False)
    anonymous = client.get("/v/team/coach@1", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=")
    login_page = client.get("/v/team/coach@1").text  # redirected to the login form
    assert "Log in" in login_page and catalogue.get_version("team/coach@1").digest not in login_page
    assert client.get("/api/v/team/coach@1").status_code == 401
    assert client.get("/api/", headers={"Authorization": "Bearer wrong-token-value"}).status_code == 401
    assert client.get("/api/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/static/style.css").status_code == 200  # the login page needs its stylesheet
    wrong = client.post("/login", data={"token": "nope", "next": "/a/team/coach"}, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong token" in wrong.text and "set-cookie" not in wrong.headers
    right = client.post("/login", data={"token": token, "next": "/a/team/coach"}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/a/team/coach"
    cookie = right.headers["set-cookie"]
    assert token not in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert client.get("/v/team/coach@1").status_code == 200  # the cookie now rides along
    assert client.get("/api/v/team/coach@1").status_code == 200
    # No open redirect through ?next=.
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        fresh = TestClient(create_app(token=token))
        r = fresh.post("/login", data={"token": token, "next": target}, follow_redirects=False)
        assert r.headers["location"] == "/", target
    fresh = TestClient(create_app(token=token))
    assert fresh.post("/login", content=b"token=" + b"x" * 5000,
                      headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 413


def test_a_cached_page_follows_every_catalogue_change(populated: dict[str, str], client: TestClient) -> None:
    assert "prod→v2" in client.get("/").text
    catalogue.set_alias("team/coach@1", "prod")  # a write: it appends an event
    assert "prod→v1" in client.get("/").text


def test_a_change_around_the_catalogue_shows_within_the_cache_lifetime(populated: dict[str, str]) -> None:
    from sqlalchemy import select, update

    from registry import db
    from registry.models import AliasRow, VersionRow

    client = TestClient(create_app(cache_seconds=0.5))
    assert "prod→v2" in client.get("/").text
    with db.session_scope(write=True) as session:  # what an intruder would do: no event
        v1 = session.scalar(select(VersionRow.id).where(VersionRow.digest == catalogue.get_version("team/coach@1").digest))
        session.execute(update(AliasRow).where(AliasRow.alias == "prod").values(version_id=v1))
    uncached = TestClient(create_app(cache_seconds=0))
    assert "prod→v1" in uncached.get("/").text
    deadline = time.monotonic() + 10
    while "prod→v1" not in client.get("/").text:
        assert time.monotonic() < deadline, "the cached page never expired"
        time.sleep(0.1)


def test_pages_never_import_torch(populated: dict[str, str], tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from starlette.testclient import TestClient\n"
        "from registry.web import create_app\n"
        "c = TestClient(create_app())\n"
        f"for url in {PAGES!r}:\n"
        "    assert c.get(url).status_code == 200, url\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_spr_ui_refuses_to_listen_beyond_loopback_without_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = spr(capsys, "ui", "--host", "0.0.0.0")
    assert code == 2 and "without a token" in err and "Traceback" not in err
    code, _, err = spr(capsys, "ui", "--token", "short")
    assert code == 2 and "too short" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("workers", [1, 2])
def test_spr_ui_serves_over_http(populated: dict[str, str], workers: int) -> None:
    import httpx

    port = _free_port()
    token = "http-test-token"
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli.main", "ui", "--port", str(port), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "SPR_UI_TOKEN": token})
    url = f"http://127.0.0.1:{port}/v/team/coach@prod"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(url, timeout=5, headers={"Authorization": f"Bearer {token}"})
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode() if proc.stderr else ""
                time.sleep(0.2)
        assert response.status_code == 200 and "team/coach" in response.text
        assert "server" not in response.headers
        assert httpx.get(url, timeout=5, follow_redirects=False).status_code == 303  # the token holds in every worker
    finally:
        proc.terminate()
        proc.wait(timeout=10)
