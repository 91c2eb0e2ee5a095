"""The article's four-sample problem: MLP(3, [4, 4, 1]) learns xs -> ys (mse).

    python examples/article_four_samples.py   # needs a running service (`make run`)

URL and key: $TRAINYARD_URL, $TRAINYARD_API_KEY or var/api-key, as for every client.
"""

from __future__ import annotations

from client import Client

xs = [
    [2.0, 3.0, -1.0],
    [3.0, -1.0, 0.5],
    [0.5, 1.0, 1.0],
    [1.0, 1.0, -1.0],
]
ys = [1.0, -1.0, -1.0, 1.0]


def main() -> None:
    api = Client()
    dataset = api.upload_dataset(xs, ys, name="article four samples")
    job = api.submit_job(
        dataset["id"], [4, 4, 1], loss="mse", optimizer="sgd", learning_rate=0.05,
        epochs=200, batch_size=None, seed=1,
    )  # fmt: skip
    job = api.wait(job["id"], poll_interval=0.2)
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['status']}: {job['error']}")
    predictions = api.predict(job["model_id"], xs)["predictions"]
    print(f"job {job['id']}: final loss {job['metrics']['loss']:.5f}")
    for target, prediction in zip(ys, predictions, strict=True):
        print(f"  target {target:+.1f}  prediction {prediction:+.4f}")


if __name__ == "__main__":
    main()
