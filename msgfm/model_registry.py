"""The pretrained encoder as an MLflow model, and the Table 3 one in the model registry.

Every finished pretraining job logs its encoder as an MLflow (pyfunc) model: the run's Model
column, loadable wherever MLflow runs. The model carries ``encoder.pt`` itself, the checkpoint
:func:`msgfm.model.factory.load_encoder` reads (config + state dict, not a pickled module, so the
file outlives code changes that keep the weights' names), and the msgfm package as its code.
Its metadata lists the sensors with their channel counts and each stem's input statistics (the
per-band standardisation the stems apply, paper §3.1), so a user sees what input it expects
without loading it. The 800-epoch model behind Table 3 (paper §4.1) is registered as
:data:`ENCODER_MODEL`, one version per run; :data:`TABLE3_ALIAS` names the version behind the
Table 3 last written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

import msgfm
from msgfm.model.factory import PretrainedBackbone, load_encoder
from msgfm.tracking import ENCODER_MODEL, _retry

MODEL_NAME = "encoder"  # the logged model's name in its run


class EncoderModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of an encoder: ``predict`` returns the final features of a batch of one
    sensor (the ``sensor`` param; the model's signature lists the names), and
    ``unwrap_python_model().encoder`` is the module ``load_encoder`` builds, for fine-tuning."""

    def load_context(self, context: Any) -> None:
        self.encoder = load_encoder(context.artifacts["encoder"]).eval()

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        # np.ndarray: a hint MLflow 3 infers no schema from, so the explicit signature
        # (_signature: tensor shapes, the sensor param) stays the model's schema.
        sensor = (params or {}).get("sensor")
        with torch.no_grad():
            return self.encoder(torch.as_tensor(model_input), sensor).numpy()


def encoder_metadata(backbone: PretrainedBackbone) -> dict[str, Any]:
    """Sensors with their channel counts, and each stem's per-band input statistics."""
    return {
        "sensors": {name: len(stem.input_mean) for name, stem in backbone.embeds.items()},
        "input_statistics": {
            name: {"mean": stem.input_mean.tolist(), "std": stem.input_std.tolist()}
            for name, stem in backbone.embeds.items()
        },
    }


def _signature(backbone: PretrainedBackbone, config: dict[str, Any]) -> Any:
    """(batch, bands, img, img) float32 in, (batch, features, g, g) out, ``sensor`` a param."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    side = config["img_size"]
    grid = side // config["patch_size"] // 2 ** (len(config["depths"]) - 1)
    float32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(float32, (-1, -1, side, side))]),
        outputs=Schema([TensorSpec(float32, (-1, backbone.num_features, grid, grid))]),
        params=ParamSchema([ParamSpec("sensor", "string", next(iter(backbone.embeds)))]),
    )


@contextmanager
def _active_run(uri: str, run_id: str) -> Iterator[None]:
    """pyfunc.log_model takes no client: it logs to MLflow's global store and active run. Both
    are set for the call and put back after, with MLFLOW_TRACKING_URI (which set_tracking_uri
    writes, and the job's environment may hold)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        mlflow.set_tracking_uri(before)  # None: unset again


def _requirements() -> list[str]:
    """The installed releases of what msgfm.model imports, without a local build tag
    (torch's +cu130), which no index resolves."""
    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "timm", "numpy")]


def log_encoder_model(uri: str, run_id: str, encoder_file: str | Path, *, register: bool) -> Any:
    """Log ``encoder_file`` as the run's model; ``register``: also as a new version of
    :data:`ENCODER_MODEL`. Returns MLflow's ModelInfo (``registered_model_version`` set when
    registered)."""
    state = torch.load(encoder_file, map_location="cpu", weights_only=True)
    backbone = load_encoder(state)

    def log() -> Any:
        with _active_run(uri, run_id):
            return mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=EncoderModel(),
                artifacts={"encoder": str(encoder_file)},
                code_paths=[str(Path(msgfm.__file__).parent)],
                pip_requirements=_requirements(),
                signature=_signature(backbone, state["config"]),
                metadata=encoder_metadata(backbone),
                registered_model_name=ENCODER_MODEL if register else None,
            )

    # A lost SQLite lock would fail the job after its last epoch, so it is retried: at worst the
    # run then holds the model twice (and, if registration itself was lost, two versions).
    return _retry(log)
