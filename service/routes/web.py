"""GET /: the page for trying the service in a browser."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

router = APIRouter(tags=["web"])

INDEX_HTML = Path(__file__).resolve().parent.parent / "static" / "index.html"


@router.get("/", response_model=None, response_class=HTMLResponse, include_in_schema=False)
async def index() -> FileResponse:
    """Serve the upload page."""
    return FileResponse(INDEX_HTML, media_type="text/html")
