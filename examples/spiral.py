"""A 3-class spiral (cross_entropy), layers [32, 32, 3].

python examples/spiral.py   # needs a running service (`make run`)
"""

from __future__ import annotations

import numpy as np

from client import Client


def spiral(per_class: int = 100, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = np.tile(np.linspace(0.05, 1.0, per_class), classes)
    label = np.repeat(np.arange(classes), per_class)
    theta = label * 2 * np.pi / classes + r * 4.0 + rng.normal(scale=0.15, size=r.shape)
    x = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
    return x, label


def main() -> None:
    api = Client()
    x, y = spiral()
    dataset = api.upload_dataset(x, y, name="spiral")
    job = api.submit_job(
        dataset["id"], [32, 32, 3], loss="cross_entropy", optimizer="adam",
        learning_rate=0.02, epochs=150, batch_size=32, seed=0,
    )  # fmt: skip
    job = api.wait(job["id"], poll_interval=0.5)
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['status']}: {job['error']}")
    print(f"job {job['id']}: accuracy {job['metrics']['accuracy']:.3f}")
    grid = [[0.0, 0.0], [0.5, 0.5], [-0.5, 0.5]]
    answer = api.predict(job["model_id"], grid)
    for point, label in zip(grid, answer["predictions"], strict=True):
        print(f"  {point} -> class {label}")


if __name__ == "__main__":
    main()
