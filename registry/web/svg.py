"""Server-side SVG: the lineage graph and line plots (eval scores over versions, loss curves).

No graph library and no script: every shape is built here from catalogue values, and every value
that reaches the SVG goes through :func:`markupsafe.escape` (text and attributes alike), because
names, dataset names and metric names are whatever a publisher typed. Styling uses presentation
attributes (``fill``, ``stroke``, ``stroke-dasharray``), which a Content-Security-Policy without
``'unsafe-inline'`` allows, so the SVG also reads right when opened on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from markupsafe import Markup, escape

from registry.types import Lineage, VersionInfo

NODE_W = 300
NODE_H = 46
ROW = 64
SIDE_X = 420
SIDE_W = 300
PAD = 16

COLOURS = {
    "version": ("#eef4ff", "#3563c9"),
    "current": ("#dbe7ff", "#1d3f8f"),
    "unverified": ("#fff6e0", "#b7791f"),
    "missing": ("#f4f4f4", "#888888"),
    "base": ("#eefaf0", "#2f7d43"),
    "dataset": ("#f6efff", "#6b46c1"),
    "evaldata": ("#fff0f3", "#b83258"),
}


def _short(text: str, n: int = 42) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _digest12(digest: str | None) -> str:
    return (digest or "").replace("sha256:", "")[:12]


def version_href(ref: str) -> str:
    """``/v/ns/name@N`` for a ref (names are validated by the catalogue: URL-safe already)."""
    namespace, _, rest = ref.partition("/")
    return f"/v/{quote(namespace, safe='')}/{quote(rest, safe='@:')}"


@dataclass
class _Node:
    key: str
    kind: str  # version | current | unverified | missing | base | dataset | evaldata
    x: int
    y: int
    title: str
    subtitle: str
    href: str | None
    tooltip: str


def lineage_svg(
    lineage: Lineage,
    *,
    base_href: Callable[[str], str],
    dataset_href: Callable[[str], str],
    evals_href: Callable[[str], str],
) -> Markup:
    """The lineage of a version as an SVG graph.

    Left column: the version, then its parents down to the root (a parent known only by digest is a
    grey dashed box). Right column: each distinct base model, training dataset and eval dataset,
    joined to the versions that used it. A version whose lineage came from ``spr import`` (the
    adapter's own claims, not seen by the registry) is drawn amber with dashed edges.
    """
    nodes: list[_Node] = []
    edges: list[tuple[_Node, _Node, str]] = []  # (from, to, kind: parent | unverified | base | dataset | evaldata)
    side: dict[str, _Node] = {}
    linked: set[tuple[int, int]] = set()
    next_side_y = PAD

    def side_node(key: str, kind: str, row_y: int, title: str, subtitle: str, href: str | None, tip: str) -> _Node:
        nonlocal next_side_y
        if key not in side:
            y = max(row_y, next_side_y)
            side[key] = _Node(key, kind, SIDE_X, y, title, subtitle, href, tip)
            next_side_y = y + ROW
            nodes.append(side[key])
        return side[key]

    chain: list[tuple[str, VersionInfo | None, str]] = [(lineage.version.ref, lineage.version, lineage.version.digest)]
    chain += [(a.ref or "", a.version, a.digest) for a in lineage.ancestors]
    previous: _Node | None = None
    previous_verified = True
    for i, (ref, version, digest) in enumerate(chain):
        y = PAD + i * ROW
        if version is None:
            node = _Node(digest, "missing", PAD, y, "parent not in this catalogue", f"sha256:{_digest12(digest)}…",
                         None, f"parent known only by digest {digest}")
            nodes.append(node)
        else:
            kind = "current" if i == 0 else "version"
            if not version.lineage_verified:
                kind = "unverified"
            sub = f"{version.peft_type} · {_digest12(version.digest)}"
            if version.aliases:
                sub += " · " + ",".join(version.aliases)
            if version.status != "active":
                sub += f" · {version.status}"
            tip = f"{ref} {version.digest}" + ("" if version.lineage_verified else " (lineage unverified: from spr import)")
            node = _Node(version.digest, kind, PAD, y, ref, sub, version_href(ref), tip)
            nodes.append(node)
            if version.base_model is not None:
                b = version.base_model
                label = b.name + (f"@{b.revision[:12]}" if b.revision else "")
                fp = f"fingerprint {_digest12(b.embedding_fingerprint)}" if b.embedding_fingerprint else b.source
                target = side_node("base:" + label + (b.embedding_fingerprint or ""), "base", y, "base " + label, fp,
                                   base_href(b.name), f"base model {label} ({fp})")
                edges.append((node, target, "base"))
            if version.dataset is not None:
                d = version.dataset
                recs = f" · {d.records} records" if d.records is not None else ""
                target = side_node("data:" + d.digest, "dataset", y, "data " + (d.name or _digest12(d.digest)),
                                   f"{_digest12(d.digest)}{recs}", dataset_href(d.digest),
                                   f"training dataset {d.name or ''} {d.digest}")
                edges.append((node, target, "dataset"))
            for score in version.latest_scores().values():
                label = score.dataset_name or _digest12(score.dataset) or "unnamed eval data"
                target = side_node("eval:" + (score.dataset or score.dataset_name or ""), "evaldata", y,
                                   "eval " + label, _digest12(score.dataset) or "-",
                                   evals_href(version.full_name), f"eval data {label} {score.dataset or ''}")
                if (id(node), id(target)) not in linked:
                    linked.add((id(node), id(target)))
                    edges.append((node, target, "evaldata"))
        if previous is not None:
            edges.append((previous, node, "parent" if previous_verified else "unverified"))
        previous = node
        previous_verified = version.lineage_verified if version is not None else True
        if version is None:
            break

    height = max((n.y for n in nodes), default=0) + NODE_H + PAD
    width = SIDE_X + SIDE_W + PAD
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="lineage of {escape(lineage.version.ref)}" '
        f'font-family="system-ui, sans-serif" font-size="12">'
    ]
    for src, dst, kind in edges:
        if kind in ("parent", "unverified"):
            x1, y1, x2, y2 = src.x + 24, src.y + NODE_H, dst.x + 24, dst.y
        else:
            x1, y1, x2, y2 = src.x + NODE_W, src.y + NODE_H // 2, dst.x, dst.y + NODE_H // 2
        colour = COLOURS.get(kind, COLOURS["version"])[1] if kind != "parent" else "#3563c9"
        dash = ' stroke-dasharray="6 4"' if kind == "unverified" else ""
        opacity = "1" if kind in ("parent", "unverified") else "0.45"
        parts.append(
            f'<line class="edge edge-{kind}" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" '
            f'stroke-width="1.5" opacity="{opacity}"{dash}/>'
        )
    for n in nodes:
        fill, stroke = COLOURS[n.kind]
        dash = ' stroke-dasharray="6 4"' if n.kind in ("unverified", "missing") else ""
        w = SIDE_W if n.x == SIDE_X else NODE_W
        weight = ' font-weight="bold"' if n.kind == "current" else ""
        shape = (
            f'<g class="node node-{n.kind}" data-key="{escape(n.key)}"><title>{escape(n.tooltip)}</title>'
            f'<rect x="{n.x}" y="{n.y}" width="{w}" height="{NODE_H}" rx="6" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="1.5"{dash}/>'
            f'<text x="{n.x + 10}" y="{n.y + 19}" fill="#111"{weight}>{escape(_short(n.title))}</text>'
            f'<text x="{n.x + 10}" y="{n.y + 36}" fill="#555">{escape(_short(n.subtitle, 48))}</text></g>'
        )
        if n.href:
            shape = f'<a href="{escape(n.href)}">{shape}</a>'
        parts.append(shape)
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class PlotPoint:
    label: str  # x-axis label (e.g. "v3")
    value: float
    tooltip: str
    href: str | None = None


def line_plot(points: Sequence[PlotPoint], *, title: str, y_label: str = "", width: int = 640, height: int = 220) -> Markup:
    """A line plot of ``points`` in order (x is their position), with labelled min/max and points."""
    left, right, top, bottom = 64, 16, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [p.value for p in points if math.isfinite(p.value)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'font-family="system-ui, sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold" fill="#111">{escape(_short(title, 80))}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    if not values:
        parts.append(f'<text x="{left + 10}" y="{top + 20}" fill="#555">no values</text></svg>')
        return Markup("".join(parts))
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)
    n = len(points)

    def px(i: int) -> float:
        return left + (plot_w / 2 if n == 1 else i * plot_w / (n - 1))

    def py(v: float) -> float:
        return top + plot_h - (v - lo) / (hi - lo) * plot_h

    for v in (lo, (lo + hi) / 2, hi):
        y = py(v)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{v:.4g}</text>')
    if y_label:
        parts.append(
            f'<text x="12" y="{top + plot_h / 2:.1f}" transform="rotate(-90 12 {top + plot_h / 2:.1f})" '
            f'text-anchor="middle" fill="#555">{escape(_short(y_label, 30))}</text>'
        )
    coords = [(px(i), py(p.value)) for i, p in enumerate(points) if math.isfinite(p.value)]
    parts.append(
        '<polyline fill="none" stroke="#3563c9" stroke-width="1.8" points="'
        + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>'
    )
    step = max(1, math.ceil(n / 12))  # at most ~12 x labels
    for i, p in enumerate(points):
        if not math.isfinite(p.value):
            continue
        x, y = px(i), py(p.value)
        dot = (f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="{4 if n <= 60 else 2}" fill="#3563c9">'
               f'<title>{escape(p.tooltip)}</title></circle>')
        if p.href:
            dot = f'<a href="{escape(p.href)}">{dot}</a>'
        parts.append(dot)
        if i % step == 0 or i == n - 1:
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#555">'
                         f'{escape(_short(p.label, 12))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
