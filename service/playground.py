"""The playground page at `/`, its static files under `/static/`, and `/docs` served from those files.

Everything the browser loads comes from this package (service/static/): no CDN, no build step. Swagger UI is
vendored from npm's `swagger-ui-dist` at the version pinned in `SWAGGER_UI` (service/static/vendor/swagger-ui/
holds its licence and notice). The page and its assets answer GET without an API key (`public`); every API
call the page makes carries the key its user typed.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
ASSETS = "/static"
SWAGGER_UI = "5.35.0"  # npm swagger-ui-dist, vendored whole files (sha256s in vendor/swagger-ui/README.md)
PAGE_METHODS = ("GET", "HEAD")

router = APIRouter(include_in_schema=False)


def public(method: str, path: str) -> bool:
    """Whether the request is for the page or one of its files: those need no key. Only reads, and only the
    page itself and the static mount (StaticFiles refuses paths that climb out of its folder)."""
    return method in PAGE_METHODS and (path == "/" or path.startswith(ASSETS + "/"))


@router.get("/")
async def page() -> FileResponse:
    """The playground: samples, interpolation, editing and synthetic sets of every served model."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/docs")
async def docs() -> HTMLResponse:
    """Swagger UI from the vendored files: it renders with no network."""
    vendor = f"{ASSETS}/vendor/swagger-ui"
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="GAN generator service - API",
        swagger_js_url=f"{vendor}/swagger-ui-bundle.js",
        swagger_css_url=f"{vendor}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.svg",
        swagger_ui_parameters={"validatorUrl": None},  # the default badge is an image from a public host
    )


def install_playground(app: FastAPI) -> None:
    """Add the page, the docs and the static mount; the app must be built with docs_url=None, redoc_url=None."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="static")
