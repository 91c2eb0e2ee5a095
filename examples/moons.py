"""Two interleaving half-moons (binary classification), layers [16, 16, 1].

python examples/moons.py   # needs a running service (`make run`)
"""

from __future__ import annotations

import numpy as np

from client import Client, Job


def moons(n: int = 400, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper[:, None],
                 np.stack([np.cos(t), np.sin(t)], axis=1),
                 np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=1))  # fmt: skip
    x += rng.normal(scale=noise, size=x.shape)
    return x, np.where(upper, "upper", "lower")


def report(job: Job) -> None:
    p = job["progress"]
    if job["loss_history"] and p["epoch"] % 20 == 0:
        print(f"  epoch {p['epoch']}/{p['epochs']}  loss {job['loss_history'][-1]:.4f}")


def main() -> None:
    api = Client()
    x, y = moons()
    dataset = api.upload_dataset(x, y, name="moons")
    job = api.submit_job(
        dataset["id"], [16, 16, 1], loss="binary_cross_entropy", optimizer="adam",
        learning_rate=0.02, epochs=100, batch_size=32, validation_split=0.2,
    )  # fmt: skip
    job = api.wait(job["id"], poll_interval=0.5, on_progress=report)
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['status']}: {job['error']}")
    metrics = job["metrics"] or {}
    print(f"job {job['id']}: accuracy {metrics['accuracy']:.3f}, "
          f"validation accuracy {metrics['val_accuracy']:.3f}")  # fmt: skip
    # the trained model with its preprocessing (the inputs are standardized), run locally
    model = api.load_model(job["model_id"])
    points = [[0.0, 1.0], [1.0, -0.5]]
    local = model.predict(points)
    remote = api.predict(job["model_id"], points)
    print(f"local predictions at (0, 1) and (1, -0.5): {local['predictions']} "
          f"(the service: {remote['predictions']})")  # fmt: skip
    logits = model.mlp(model.encode(points)).numpy().ravel()  # the engine MLP, encoded inputs
    print(f"local logits: {logits.round(2).tolist()}")


if __name__ == "__main__":
    main()
