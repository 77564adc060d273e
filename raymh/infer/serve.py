"""`raymh serve`: the model as a Ray Serve application with dynamic batching.

    POST /predict?domain=D[&format=trainid|color]   body: PNG or JPEG bytes  ->  the label map as PNG
    GET  /domains                                   ->  {domain: {"classes", "palette", "label_format"}}

Requests are checked before they reach the model: an unknown domain or format, a body that is not an image,
or one larger than the limits gets a 4xx with a JSON message, and the replica keeps serving. Valid requests
are grouped by `@serve.batch`; a batch runs same-domain, same-size images through the model together.
"""

from __future__ import annotations

import asyncio
import io
import os
import time

import numpy as np
from ray import serve

SERVE_FORMATS = ("trainid", "color")
MAX_BODY_BYTES = 32 * 2**20
MAX_PIXELS = 64 * 2**20


@serve.deployment
class SegmentationService:
    def __init__(self, model: str, *, tracking_uri: str | None = None, threads: int = 1) -> None:
        import torch

        from raymh.infer.loading import load_bundle
        from raymh.infer.segmenter import Segmenter

        torch.set_num_threads(threads)
        self.segmenter = Segmenter(load_bundle(model, tracking_uri=tracking_uri))

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if path == "domains" and request.method == "GET":
            return JSONResponse(self.segmenter.domains)
        if path == "predict" and request.method == "POST":
            return await self._predict(request)
        return _error(404, f"no route {request.method} {request.url.path}; use POST /predict?domain=D or GET /domains")

    async def _predict(self, request):
        from PIL import Image, UnidentifiedImageError
        from starlette.responses import Response

        from raymh.infer.formats import get_format

        domain = request.query_params.get("domain")
        fmt = request.query_params.get("format", "trainid")
        if domain not in self.segmenter.domains:
            return _error(400, f"unknown domain {domain!r}: pass ?domain= one of {list(self.segmenter.domains)}")
        if fmt not in SERVE_FORMATS:
            return _error(400, f"unknown format {fmt!r}: use one of {list(SERVE_FORMATS)}")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES}")
        try:
            with Image.open(io.BytesIO(body)) as im:
                if im.width * im.height > MAX_PIXELS:
                    return _error(413, f"image of {im.width}x{im.height} pixels is over the limit of {MAX_PIXELS}")
                if im.format not in ("PNG", "JPEG"):
                    return _error(415, f"a {im.format} image: send PNG or JPEG bytes")
                image = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            return _error(415, f"the body is not a readable PNG or JPEG image ({type(e).__name__}: {e})")
        pred = await self.predict_batch((image, domain))
        png = get_format(fmt).encode(pred, image, self.segmenter.domains[domain])
        return Response(png, media_type="image/png")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def predict_batch(self, items: list[tuple[np.ndarray, str]]) -> list[np.ndarray]:
        """Label maps of a batch of (image, domain) requests; the model runs off the event loop."""
        return await asyncio.to_thread(self._predict_all, items)

    def _predict_all(self, items: list[tuple[np.ndarray, str]]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(items)
        for domain in {d for _, d in items}:
            idx = [i for i, (_, d) in enumerate(items) if d == domain]
            for i, pred in zip(idx, self.segmenter.predict([items[i][0] for i in idx], domain), strict=True):
                out[i] = pred
        return out  # type: ignore[return-value]


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def build_app(
    model: str, *, replicas: int = 1, gpus_per_replica: float = 0, cpus_per_replica: int = 1,
    tracking_uri: str | None = None,
):  # fmt: skip
    """The bound Serve application (deploy it with `serve.run`)."""
    from raymh.platform.tracking import resolve_tracking_uri

    options = {"num_cpus": cpus_per_replica, **({"num_gpus": gpus_per_replica} if gpus_per_replica else {})}
    return SegmentationService.options(num_replicas=replicas, ray_actor_options=options).bind(
        model, tracking_uri=tracking_uri or resolve_tracking_uri(), threads=cpus_per_replica
    )


def run_serve(
    model: str, *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, gpus_per_replica: float = 0,
    cpus_per_replica: int = 1, address: str | None = None, tracking_uri: str | None = None,
):  # fmt: skip
    """Start the app and serve until interrupted."""
    import ray

    from raymh.infer.loading import load_bundle

    bundle = load_bundle(model, tracking_uri=tracking_uri)  # fail here, with a clear message, not in a replica
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False) if address else ray.init(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(
        build_app(model, replicas=replicas, gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                  tracking_uri=tracking_uri),
        name="raymh", route_prefix="/",
    )  # fmt: skip
    url = f"http://{host}:{port}"
    print(f"[raymh] serving {bundle.source} ({', '.join(bundle.domains)}) at {url}: "
          f"POST {url}/predict?domain={next(iter(bundle.domains))} (PNG/JPEG body), GET {url}/domains; "
          "Ctrl-C stops", flush=True)  # fmt: skip
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[raymh] stopping", flush=True)
    finally:
        serve.shutdown()
