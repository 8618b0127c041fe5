"""The generator as an MLflow pyfunc model: catalog rows in, base64 PNGs out.

Jobs and Serve load the registered generator directory through :mod:`backdrop.runtime`; this
wrapper makes a registered version usable from any MLflow tool as well, through the same
runtime (one loader, one request builder, one failure-isolating ``generate``).
"""

from __future__ import annotations

import base64

import mlflow

from . import registry, runtime
from .imaging import encode_image
from .inputs import fetch_product
from .limits import DEFAULT_GUIDANCE


class GeneratorPyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` takes rows of (image_uri, mask_uri, category, [reference_uri, prompt, seed])."""

    def load_context(self, context):
        self.generator = runtime.load(context.artifacts[registry.GENERATOR_ARTIFACT])

    def predict(self, context, model_input, params=None):
        params = params or {}
        config = runtime.inference(int(params.get("steps", 50)), float(params.get("guidance", DEFAULT_GUIDANCE)),
                                   scheduler=params.get("scheduler"))
        requests = [fetch_product(r).requests([int(r.get("seed", 0) or 0)])[0]
                    for r in model_input.to_dict("records")]
        out = []
        for result in runtime.generate(self.generator, requests, config):
            if isinstance(result, Exception) or not hasattr(result, "save"):
                raise RuntimeError(f"generation failed: {result.line}")
            out.append(base64.b64encode(encode_image(result)).decode())
        return out


def log_generator(model, *, registered_model_name: str | None = None, tags: dict | None = None):
    """Log ``model`` in the active run as this pyfunc; optionally register a version."""
    return registry.log_model_dir(model.save_pretrained, GeneratorPyfunc(),
                                  registered_model_name=registered_model_name, tags=tags)
