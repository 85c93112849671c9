"""The explorer's web app: a static page and four JSON endpoints over session.py (no model logic here).

    GET  /              the page (static/index.html, static/app.js; no external assets)
    GET  /api/info      the run pairs, the scene range, the POPE objects
    POST /api/caption   {"scene": 3 | "random"} or {"upload": base64}, "decoding": {...}  -> per pair: caption
    POST /api/align     the picture + "caption": a typed caption                          -> per pair: SPARK maps
    POST /api/pope      the picture + "object": a shape name                              -> per pair: yes / no

Bad input is a 400 with {"error": one sentence}; a pair that cannot serve a picture (an oracle run and an upload)
gets {"error": ...} in its own slot. Anything unexpected is logged here and answered as a one-line 500, never a
traceback on the page.
"""
from __future__ import annotations

import base64
import binascii
import logging
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.concurrency import run_in_threadpool

from ..data.scene_vocab import SHAPES
from . import session
from .session import NUM_SCENES, Picture, RunPair

STATIC = Path(__file__).with_name("static")
log = logging.getLogger(__name__)


def picture_from(body: dict) -> Picture:
    if "upload" in body:
        if not isinstance(body["upload"], str):
            raise ValueError("upload must be the file's bytes in base64")
        try:
            data = base64.b64decode(body["upload"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("upload is not valid base64") from None
        return Picture.of_upload(data)
    if "scene" in body:
        return Picture.of_scene(body["scene"])
    raise ValueError("choose a scene or upload an image")


def create_app(pairs: list[RunPair]) -> Starlette:
    lock = threading.Lock()  # one model call at a time: the pairs are shared and CPU-bound

    def per_pair(check, action):
        """An endpoint that checks the request (`check(body)`, a ValueError is a 400), then runs `action(pair,
        picture, body)` for every pair on its picture, in a worker thread (off the event loop); a ValueError of
        one pair stays in its slot."""
        def answer(body) -> JSONResponse:
            try:
                if not isinstance(body, dict):
                    raise ValueError("the request body must be a JSON object")
                check(body)
                picture = picture_from(body)
                results = []
                with lock:
                    view = session.picture_view(picture)
                    for pair in pairs:
                        try:
                            results.append({"name": pair.name, **action(pair, picture, body)})
                        except ValueError as e:
                            results.append({"name": pair.name, "error": str(e)})
                return JSONResponse({**view, "pairs": results})
            except ValueError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            except Exception as e:  # noqa: BLE001 - logged in full here, one line to the page
                log.exception("explorer request failed")
                return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

        async def endpoint(request: Request) -> JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"error": "the request body is not JSON"}, status_code=400)
            return await run_in_threadpool(answer, body)
        return endpoint

    def info(_request: Request) -> JSONResponse:
        return JSONResponse({"pairs": [{"name": p.name, "oracle": p.oracle} for p in pairs],
                            "scenes": NUM_SCENES, "objects": list(SHAPES),
                            "max_upload_bytes": session.MAX_UPLOAD_BYTES})

    def static(name: str, media_type: str):
        content = (STATIC / name).read_text(encoding="utf-8")
        return lambda _request: Response(content, media_type=media_type)

    routes = [
        Route("/", lambda _r: HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))),
        Route("/app.js", static("app.js", "text/javascript")),
        Route("/api/info", info),
        Route("/api/caption", per_pair(lambda b: session.decoding_kwargs(_options(b)),
                                       lambda p, pic, b: session.caption(p, pic, _options(b))), methods=["POST"]),
        Route("/api/align", per_pair(lambda b: session.typed_caption(b.get("caption")),
                                     lambda p, pic, b: {"tokens": session.align(p, pic, b["caption"])}),
              methods=["POST"]),
        Route("/api/pope", per_pair(lambda b: session.pope_object(b.get("object")),
                                    lambda p, pic, b: session.pope(p, pic, b["object"])), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _options(body: dict) -> dict:
    options = body.get("decoding", {})
    if not isinstance(options, dict):
        raise ValueError("decoding must be a JSON object")
    return options


def serve(app: Starlette, port: int):
    """A uvicorn server for `app` on 127.0.0.1:`port` (call .run(), or run it in a thread and set should_exit)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
