"""The Python client of the trainyard API (no Flask import).

from client import Client

api = Client()  # URL: $TRAINYARD_URL; key: $TRAINYARD_API_KEY or var/api-key
ds = api.upload_csv("penguins.csv", target="species")  # text columns, missing cells
job = api.submit_job(ds["id"], [16, 16, 3], early_stopping=True, test_split=0.2)
job = api.wait(job["id"], on_progress=lambda j: print(j["progress"]))
job["evaluation"]["test"]  # accuracy, f1, confusion_matrix, ... on the held-out rows
api.predict(job["model_id"], [{"island": "Biscoe", "bill_length_mm": 41.2}])
model = api.load_model(job["model_id"])  # a core.model.Model: weights + preprocessing
model.predict([{"island": "Biscoe", "bill_length_mm": 41.2}])  # the same, locally
"""

from client.api import (
    ApiError,
    Client,
    ConnectionFailed,
    Dataset,
    Evaluation,
    Job,
    LocalModel,
    Model,
    NotFoundError,
    Page,
    Prediction,
    Sweep,
    TrainyardError,
    WaitTimeout,
    api_key_locations,
    find_api_key,
    read_features_csv,
)

__all__ = [
    "ApiError",
    "Client",
    "ConnectionFailed",
    "Dataset",
    "Evaluation",
    "Job",
    "LocalModel",
    "Model",
    "NotFoundError",
    "Page",
    "Prediction",
    "Sweep",
    "TrainyardError",
    "WaitTimeout",
    "api_key_locations",
    "find_api_key",
    "read_features_csv",
]
