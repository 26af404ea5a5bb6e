"""Formatting shared by the report pages: numbers, HTML pages, cards and tables."""

from __future__ import annotations

import html


def ratio(a, b):
    return a / b if a is not None and b else None


def fewer(r: float) -> str:
    return f", {1 / r:.1f}x fewer" if 0 < r < 0.999 else (f", {r:.1f}x more" if r > 1.001 else "")


def fmt(v, spec=".4g"):
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;\
margin:0 auto;max-width:1100px;padding:1.5em;color:#222;background:#fff;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em .9em;min-width:12em;background:#fafafa}
.card .k{font-size:.8em;color:#666;text-transform:uppercase;letter-spacing:.03em}\
.card .v{font-size:1.35em;font-weight:600}.card .d{font-size:.85em;color:#444}
figure{margin:1.2em 0;padding:.6em;border:1px solid #eee;border-radius:6px}
figure svg{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.9em;color:#444;margin-top:.4em}
.missing{color:#888;font-style:italic}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .55em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dl.kv dt{color:#666}dl.kv dd{margin:0}
"""


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def card(key, value, detail=""):
    return (
        f'<div class="card"><div class="k">{html.escape(key)}</div>'
        f'<div class="v">{html.escape(value)}</div><div class="d">{html.escape(detail)}</div></div>'
    )


def table(headers: list[str], rows: list[list[str]], cls="") -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead>{head}</thead>\n<tbody>\n{body}\n</tbody></table>'
