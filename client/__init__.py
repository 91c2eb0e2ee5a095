"""The Python client of the trainyard API (no Flask import).

from client import Client

api = Client()  # URL: $TRAINYARD_URL; key: $TRAINYARD_API_KEY or var/api-key
ds = api.upload_dataset(x, y, name="moons")
job = api.submit_job(ds["id"], [16, 16, 1], loss="binary_cross_entropy", epochs=200)
job = api.wait(job["id"], on_progress=lambda j: print(j["progress"]))
mlp = api.load_model(job["model_id"])  # an engine.nn.MLP with the trained weights
"""

from client.api import (
    ApiError,
    Client,
    ConnectionFailed,
    Dataset,
    Job,
    Model,
    NotFoundError,
    Page,
    Prediction,
    TrainyardError,
    WaitTimeout,
    find_api_key,
    read_features_csv,
)

__all__ = [
    "ApiError",
    "Client",
    "ConnectionFailed",
    "Dataset",
    "Job",
    "Model",
    "NotFoundError",
    "Page",
    "Prediction",
    "TrainyardError",
    "WaitTimeout",
    "find_api_key",
    "read_features_csv",
]
