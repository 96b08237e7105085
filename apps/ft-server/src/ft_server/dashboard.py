"""The web dashboard at `/`: server-rendered pages (Jinja2) that hold no data of their own.

Every number, job and row a page shows is fetched by the browser from the public API
(`/api/...`, `/v1/...`) with the user's API key, the way any other client fetches it: the
dashboard has no private route into the server. So the pages and their static files are open
(like /health) and everything behind them still needs the key. htmx (buttons that act on jobs)
and uPlot (the charts) are vendored under static/vendor (see VENDORED.md there): no CDN, works
offline. Links carry the app's root path (`--root-path`), so it works behind a proxy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))

# The pages (path -> template, title); they are open, as are the static files (security.py).
PAGES = {
    "/": ("home.html", "Dashboard"),
    "/jobs": ("jobs.html", "Job queue"),
    "/models": ("models.html", "Models"),
    "/datasets": ("datasets.html", "Datasets"),
    "/config": ("config.html", "Configuration builder"),
    "/exports": ("exports.html", "Exports"),
    "/runs": ("runs.html", "Runs"),
    "/chat": ("chat.html", "Chat playground"),
}
NAV = [(path, title) for path, (_, title) in PAGES.items()]


def setup(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")


def _render(request: Request, template: str, title: str, **context: Any) -> HTMLResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    return templates.TemplateResponse(
        request,
        template,
        {"base": base, "title": title, "nav": NAV, "path": request.url.path, **context},
        headers={"Cache-Control": "no-store"},
    )


def _page(path: str, template: str, title: str) -> None:
    async def page(request: Request) -> HTMLResponse:
        extra = _config_form() if template == "config.html" else {}
        return _render(request, template, title, current=path, **extra)

    page.__name__ = f"page_{template.split('.')[0]}"
    router.add_api_route(path, page, methods=["GET"], response_class=HTMLResponse)


for _path, (_template, _title) in PAGES.items():
    _page(_path, _template, _title)


@router.get("/monitor/{job_id}", response_class=HTMLResponse)
async def monitor(job_id: str, request: Request) -> HTMLResponse:
    return _render(request, "monitor.html", f"Job {job_id}", job_id=job_id, current="/jobs")


@router.get("/tune/{job_id}", response_class=HTMLResponse)
async def study(job_id: str, request: Request) -> HTMLResponse:
    """A study's trials (a `tune` job): GET /api/tune/{job_id}/status and /trials."""
    return _render(request, "tune.html", f"Study {job_id}", job_id=job_id, current="/jobs")


# --- the configuration builder's form, from train.yml's JSON Schema ------------------------


def _config_form() -> dict[str, Any]:
    from ft_config import json_schema

    schema = json_schema()
    groups = []
    top = []
    for section, spec in schema["properties"].items():
        obj = object_of(spec)
        if obj is None:
            top.append(schema_field(section, section, spec))
            continue
        fields = [
            schema_field(f"{section}.{name}", name, sub) for name, sub in obj["properties"].items()
        ]
        groups.append(
            {"name": section, "description": spec.get("description", ""), "fields": fields}
        )
    if top:
        groups.insert(0, {"name": "general", "description": "", "fields": top})
    return {"groups": groups}


def object_of(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema of a train.yml section (itself, or its `anyOf` option), or None."""
    if spec.get("type") == "object" and "properties" in spec:
        return spec
    for option in spec.get("anyOf", []):
        if option.get("type") == "object" and "properties" in option:
            return option
    return None


def schema_field(key: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One setting of the train.yml JSON Schema as the configuration builder (and the search
    space editor, `ft_server.tune_api`) read it: its `kind` (enum, boolean, number, string or
    json), JSON `types`, `enum` words, bounds, default and help."""
    options = spec.get("anyOf", [spec])
    types = {o.get("type") for o in options if "type" in o}
    enums = [v for o in options for v in o.get("enum", [])]
    nullable = "null" in types
    types.discard("null")
    default = spec.get("default")
    if enums and not types:
        kind = "enum"
    elif types == {"boolean"}:
        kind = "boolean"
    elif types and types <= {"integer", "number"}:
        kind = "number"  # a number, or one of `enums` (auto) typed in
    elif types == {"string"} and not enums:
        kind = "string"
    else:
        kind = "json"  # lists, mappings, or a mix: typed as JSON (a plain word is a string)
    bounds = [
        f"{word} {spec[k]}"
        for k, word in (
            ("minimum", "at least"),
            ("exclusiveMinimum", "above"),
            ("maximum", "at most"),
        )
        if k in spec
    ]
    return {
        "key": key,
        "id": "cfg-" + key.replace(".", "-").replace("_", "-"),
        "name": name,
        "help": spec.get("description", ""),
        "kind": kind,
        "enum": enums,
        "nullable": nullable,
        "default": default,
        "default_text": "" if default is None else _text(default),
        "bounds": ", ".join(bounds),
        "words": [e for e in enums if kind == "number"],
        "types": sorted(types),
    }


def _text(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)
