"""Jinja2 templates of the reports (inline: they ship with the module, no package data needed)."""

MARKDOWN = """\
# Report: {{ title }}

**Status: {{ status }}**{% if not complete %} (figures cover what was recorded so far){% endif %}


{{ headline }}

{% for section, rows in sections %}

## {{ section }}

| | |
|---|---|
{% for label, value in rows %}
| {{ label }} | {{ value }} |
{% endfor %}
{% endfor %}
{% if notes %}

## Notes

{% for n in notes %}
- {{ n }}
{% endfor %}
{% endif %}

<sub>{{ footer }}</sub>
"""

COMPARE_MARKDOWN = """\
# Comparison of {{ n }} runs

| {{ headers | join(' | ') }} |
|{% for h in headers %}---|{% endfor %}

{% for row in rows %}
| {{ row | join(' | ') }} |
{% endfor %}

{% for r in runs %}
- **{{ r.label }}**: {{ r.status }}; {{ r.headline }}
{% endfor %}

<sub>{{ footer }}</sub>
"""

_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .8em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f6f6}td.v{font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:.2em .7em;border-radius:.3em;font-weight:600}
.ok{background:#e3f5e1;color:#1d6b16}.warn{background:#fdecd2;color:#8a4b00}
.headline{font-size:1.05em;margin:.8em 0}.grid{display:flex;flex-wrap:wrap;gap:1em}
.grid figure{margin:0;flex:1 1 480px}.grid img{max-width:100%}
figcaption{color:#666;font-size:.9em}.wide{overflow-x:auto;max-width:100%}
body.cmp{max-width:1400px}table.cmp{font-size:.85em}table.cmp td,table.cmp th{padding:.25em .45em}
table.cmp td{white-space:nowrap}ul.notes li{color:#8a4b00}footer{color:#888;font-size:.8em;margin-top:2em}
"""

HTML = """\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Report: {{ title }}</title>
<style>""" + _CSS + """</style></head>
<body>
<h1>Report: {{ title }}</h1>
<p><span class="status {{ 'ok' if complete else 'warn' }}">{{ status }}</span>
{% if not complete %}<span> figures cover what was recorded so far</span>{% endif %}</p>
<p class="headline">{{ headline }}</p>
<div class="grid">
{% for section, rows in sections %}
<div><h2>{{ section }}</h2>
<table>{% for label, value in rows %}<tr><th>{{ label }}</th><td class="v">{{ value }}</td></tr>{% endfor %}</table>
</div>
{% endfor %}
</div>
{% if notes %}<h2>Notes</h2><ul class="notes">{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
{% if plots %}<h2>Plots</h2>
<div class="grid">
{% for p in plots %}<figure><img alt="{{ p.title }}" src="data:image/png;base64,{{ p.png }}">
<figcaption>{{ p.title }}</figcaption></figure>
{% endfor %}</div>{% endif %}
<footer>{{ footer }}</footer>
</body></html>
"""

COMPARE_HTML = """\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Comparison of {{ n }} runs</title>
<style>""" + _CSS + """</style></head>
<body class="cmp">
<h1>Comparison of {{ n }} runs</h1>
<div class="wide"><table class="cmp"><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for c in row %}<td class="v">{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table></div>
<ul>{% for r in runs %}<li><b>{{ r.label }}</b>: <span class="status {{ 'ok' if r.complete else 'warn' }}">{{ r.status }}</span>
{{ r.headline }}</li>{% endfor %}</ul>
{% if plots %}<h2>Plots</h2>
<div class="grid">
{% for p in plots %}<figure><img alt="{{ p.title }}" src="data:image/png;base64,{{ p.png }}">
<figcaption>{{ p.title }}</figcaption></figure>
{% endfor %}</div>{% endif %}
<footer>{{ footer }}</footer>
</body></html>
"""
