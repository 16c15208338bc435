"""The pages of the web catalogue. Each view reads through the catalogue's query functions, and
returns either an HTML page or its JSON twin (the same data, shaped like the CLI's ``--json``).

Views are synchronous: Starlette runs them in its thread pool, and each makes a handful of
catalogue calls (one transaction each). Nothing here writes.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from registry import catalogue, trust
from registry.errors import UsageError
from registry.refs import Ref, parse_ref, split_name
from registry.types import Lineage, VersionInfo, json_default
from registry.web import svg

PAGE_SIZE = 50


class JSONPage(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=json_default, indent=2, sort_keys=True).encode("utf-8")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _short(digest: str | None, n: int = 12) -> str:
    return (digest or "").replace("sha256:", "")[:n] or "-"


def _qs(params: dict[str, Any], **changes: Any) -> str:
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "", 0)})


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def make_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("registry.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_when, short=_short, vhref=svg.version_href, fmt=_fmt,
        ahref=lambda full_name: "/a/" + quote(full_name, safe="/"),
        q=lambda text: quote(str(text), safe=""),
    )
    env.globals.update(qs=_qs)
    return env


class Views:
    """The page handlers, bound to one catalogue URL."""

    def __init__(self, db: str | None, *, auth: bool) -> None:
        self.db = db
        self.auth = auth
        self.env = make_environment()

    # -- helpers -------------------------------------------------------------------------------

    def page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        path = request.url.path
        context.setdefault("json_url", "/api" + (path if path != "/" else "/") + (f"?{request.url.query}" if request.url.query else ""))
        html = self.env.get_template(template).render(request_path=path, auth=self.auth, **context)
        return HTMLResponse(html, status_code=status_code)

    @staticmethod
    def ref_from_path(request: Request) -> Ref:
        """The ref in ``/v/{namespace}/{ref}``, parsed with the CLI's parser: malformed is a 404."""
        text = f"{request.path_params['namespace']}/{request.path_params['ref']}"
        try:
            return parse_ref(text)
        except UsageError as exc:
            raise HTTPException(404, f"no such version: {exc}") from None

    @staticmethod
    def name_from_path(request: Request) -> str:
        text = f"{request.path_params['namespace']}/{request.path_params['name']}"
        try:
            namespace, name = split_name(text)
        except UsageError as exc:
            raise HTTPException(404, f"no such adapter: {exc}") from None
        return f"{namespace}/{name}"

    @staticmethod
    def int_param(request: Request, key: str, default: int, lo: int, hi: int) -> int:
        raw = request.query_params.get(key)
        if raw is None or raw == "":
            return default
        if len(raw) > 12 or not raw.isascii() or not raw.isdigit() or not lo <= int(raw) <= hi:
            raise UsageError(f"query parameter {key!r} must be a whole number from {lo} to {hi}, found {raw[:20]!r}")
        return int(raw)

    @staticmethod
    def text_params(request: Request, *keys: str) -> dict[str, str]:
        """The non-empty filters among ``keys``: at most 200 printable characters each, or a 400."""
        found = {k: request.query_params[k].strip() for k in keys if request.query_params.get(k, "").strip()}
        for key, value in found.items():
            if len(value) > 200 or any(ord(c) < 32 or c == "\x7f" for c in value):
                raise UsageError(f"query parameter {key!r} must be at most 200 printable characters")
        return found

    # -- pages ---------------------------------------------------------------------------------

    def adapters(self, request: Request, as_json: bool) -> Response:
        filters = self.text_params(request, "q", "namespace", "base_model", "method", "tag", "alias")
        limit = self.int_param(request, "limit", PAGE_SIZE, 1, catalogue.MAX_PAGE)
        offset = self.int_param(request, "offset", 0, 0, 10**9)
        result = catalogue.browse_adapters(
            db=self.db, query=filters.get("q"), namespace=filters.get("namespace"),
            base_model=filters.get("base_model"), method=filters.get("method"), tag=filters.get("tag"),
            alias=filters.get("alias"), limit=limit, offset=offset,
        )
        if as_json:
            return JSONPage(result)
        facets = catalogue.facets(db=self.db)
        return self.page(request, "adapters.html", result=result, filters=filters, facets=facets,
                         params={**filters, "limit": limit if limit != PAGE_SIZE else None})

    def versions_list(self, request: Request, as_json: bool) -> Response:
        filters = self.text_params(request, "base_model", "dataset", "method")
        limit = self.int_param(request, "limit", PAGE_SIZE, 1, catalogue.MAX_PAGE)
        items = catalogue.list_versions(
            db=self.db, base_model=filters.get("base_model"), dataset=filters.get("dataset"),
            peft_type=filters.get("method"), include_inactive=True, limit=limit,
        )
        if as_json:
            return JSONPage(items)
        return self.page(request, "versions.html", items=items, filters=filters, limit=limit)

    def adapter(self, request: Request, as_json: bool) -> Response:
        name = self.name_from_path(request)
        items = catalogue.versions(name, db=self.db)
        if as_json:
            return JSONPage(items)
        aliases = {a: s.number for s in items for a in s.aliases}
        return self.page(request, "adapter.html", name=name, items=items, aliases=dict(sorted(aliases.items())))

    def version(self, request: Request, as_json: bool) -> Response:
        ref = self.ref_from_path(request)
        v = catalogue.get_version(ref, db=self.db)
        if as_json:  # the same shape as 'spr show --json', signatures included
            return JSONPage({**dataclasses.asdict(v), "signatures": trust.signature_report(v, db=self.db)})
        from registry.hub import card

        repo_id = v.hub_copies[-1].repo_id if v.hub_copies else v.full_name
        card_text = card.render(v, repo_id)
        folder = f"./{v.name}-v{v.number}"
        commands = [
            ("export a PEFT directory", f"spr export {v.ref} {folder}"),
            ("pull (verified) into a directory", f"spr pull {v.ref} --to {folder}"),
        ]
        for h in v.hub_copies:
            commands.append((f"pull from the Hub ({h.endpoint})",
                             f"spr pull {shlex.quote(h.repo_id + '@' + (h.tag or h.commit_sha))} --endpoint {shlex.quote(h.endpoint)}"))
        loss = _loss_points(v)
        loss_svg = svg.line_plot(loss, title="training loss", y_label="loss") if loss else None
        training_scalars = {k: val for k, val in sorted(v.training.items())
                            if not isinstance(val, (list, dict)) and val is not None}
        training_nested = {k: val for k, val in sorted(v.training.items())
                           if isinstance(val, dict)}
        return self.page(
            request, "version.html", v=v, commands=commands, card_text=card_text, card_repo=repo_id,
            loss_svg=loss_svg, training_scalars=training_scalars, training_nested=training_nested,
            latest=sorted(v.latest_scores().values(), key=lambda s: (s.metric, s.dataset or "")),
            peft_config=json.dumps(v.peft_config, indent=2, sort_keys=True),
        )

    def lineage(self, request: Request, as_json: bool) -> Response:
        ref = self.ref_from_path(request)
        result = catalogue.lineage(str(ref), db=self.db)
        if as_json:
            return JSONPage(result)
        return self.page(request, "lineage.html", lin=result, graph=self._lineage_svg(result))

    def lineage_svg(self, request: Request, as_json: bool) -> Response:
        ref = self.ref_from_path(request)
        result = catalogue.lineage(str(ref), db=self.db)
        return Response(str(self._lineage_svg(result)), media_type="image/svg+xml")

    @staticmethod
    def _lineage_svg(result: Lineage) -> Markup:
        return svg.lineage_svg(
            result,
            base_href=lambda name: "/versions?" + urlencode({"base_model": name}),
            dataset_href=lambda digest: "/versions?" + urlencode({"dataset": digest}),
            evals_href=lambda full_name: "/a/" + quote(full_name, safe="/") + "/evals",
        )

    def evals(self, request: Request, as_json: bool) -> Response:
        name = self.name_from_path(request)
        points = catalogue.eval_history(name, db=self.db)
        if as_json:
            return JSONPage(points)
        series: dict[tuple[str, str], list[catalogue.EvalPoint]] = {}
        for p in points:
            series.setdefault((p.metric, p.dataset or p.dataset_name or ""), []).append(p)
        plots = []
        for (metric, data_key), pts in sorted(series.items()):
            data_label = pts[-1].dataset_name or _short(pts[-1].dataset) if data_key else "unnamed eval data"
            plot_points = [
                svg.PlotPoint(
                    label=f"v{p.number}", value=p.value,
                    tooltip=f"{name}@{p.number}: {metric}={p.value:.6g} ({_when(p.recorded_at)}, {p.recorded_by})",
                    href=svg.version_href(f"{name}@{p.number}"),
                )
                for p in pts
            ]
            plots.append({
                "metric": metric, "data_label": data_label, "dataset": pts[-1].dataset, "points": pts,
                "svg": svg.line_plot(plot_points, title=f"{metric} on {data_label}", y_label=metric),
            })
        return self.page(request, "evals.html", name=name, plots=plots)

    def audit(self, request: Request, as_json: bool) -> Response:
        filters = self.text_params(request, "adapter", "actor", "action")
        limit = self.int_param(request, "limit", PAGE_SIZE, 1, catalogue.MAX_PAGE)
        offset = self.int_param(request, "offset", 0, 0, 10**9)
        check = request.query_params.get("check") == "1"
        page = catalogue.browse_events(db=self.db, adapter=filters.get("adapter"), actor=filters.get("actor"),
                                    action=filters.get("action"), limit=limit, offset=offset)
        report = _audit(self.db) if check else None
        if as_json:
            data: dict[str, Any] = dataclasses.asdict(page)
            if report is not None:
                data["audit"] = report
            return JSONPage(data)
        facets = catalogue.facets(db=self.db, actors=True)
        return self.page(request, "audit.html", page=page, filters=filters, facets=facets, report=report,
                         params={**filters, "limit": limit if limit != PAGE_SIZE else None}, check=check)


def _audit(db: str | None) -> dict[str, Any]:
    """``spr audit --no-rehash --json``'s data: presence and sizes of blobs, chain, manifests."""
    from registry import ops

    report = ops.audit(db=db, rehash=False)
    return {
        "ok": not report.errors, "versions": report.versions, "files": report.files, "blobs": report.blobs,
        "events": report.events, "seconds": report.seconds, "errors": len(report.errors),
        "warnings": len(report.warnings), "problems": report.problems, "rehash": False,
    }


def _loss_points(v: VersionInfo) -> list[svg.PlotPoint]:
    curve = v.training.get("loss_curve")
    if not isinstance(curve, list):
        return []
    points = []
    for item in curve[:5000]:
        if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, (int, float)) for x in item):
            step, value = item
            points.append(svg.PlotPoint(label=str(step), value=float(value), tooltip=f"step {step}: loss {value:.6g}"))
    return points
