"""Tables of any size (issue 22): a large CSV sent with a real tus client over a link that is cut
every 200 MB, and batch predictions over the whole table, streamed out. Not a test;
`make bench-large-io`.

The table is `bench/scale.py`'s (22 columns: 20 numeric, two text columns, a binary target),
generated chunk by chunk to a CSV file and the same rows to a Parquet file. With a fresh
service (`--mode embedded`: `python -m workers.embedded`, SQLite, a `file://` store;
`distributed`: gunicorn, a `celery worker`, PostgreSQL, Redis and a SeaweedFS S3 server):

1. **plain upload**: the CSV as one raw `text/csv` body (`bench/scale.py`'s `upload`): seconds,
   MB/s, and the API's peak RssAnon above its idle value (summed over gunicorn's processes,
   sampled every 50 ms).
2. **tus upload**: PyPI's `tuspy` (the reference Python tus client, `upload_checksum=True`,
   `--chunk-mb` chunks) sends the same file to `/api/v1/uploads` through a TCP proxy in this
   process that cuts the connection every `--cut-mb` MB it forwards (mid-request, wherever the
   count falls); tuspy asks the server for its offset (`HEAD`) and goes on. Reported: seconds,
   MB/s, cuts, the API's peak RssAnon above idle, and whether the dataset it made has the same
   rows and the same store checksum (SHA-256 over the Parquet parts) as the plain upload's.
3. **training**: a small job (`[64, 32, 1]`, `--epochs` epochs) to have a model, on the table's
   first `--train-rows` rows uploaded as a dataset of their own (the same columns; training on
   the whole table is `make bench-scale`'s subject).
4. **batch predictions**: `POST /api/v1/models/{id}/predictions` over the whole dataset: rows/s
   from the job's `started_at` to `finished_at`, the worker's peak RssAnon (main process and
   pool children), then the CSV download (`GET download_url`): seconds to the first byte,
   MB/s and rows/s of the whole body, its row count checked.
5. **PyTorch** beside it, in a process of its own (its RssAnon sampled the same way): the same
   rows read from the Parquet file a row group at a time, encoded as ours (medians,
   standardization, one-hot; `bench/scale.py`'s `encode_table`), the same MLP forward in
   PyTorch (one thread), probabilities written as CSV with pyarrow: rows/s and peak RssAnon.

Threads: one for every process (`OPENBLAS_NUM_THREADS` etc.; `torch.set_num_threads(1)`).

    .venv/bin/python bench/large_io.py [--rows 1000000] [--mode embedded|distributed]
        [--cut-mb 200] [--chunk-mb 32] [--epochs 1] [--train-rows 200000] [--no-torch]
        [--json PATH] [--folder DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench import scale  # noqa: E402

MiB = 1024 * 1024


class CuttingProxy:
    """A TCP proxy to `port` on 127.0.0.1 that closes the connection it is forwarding each time
    `cut_every` more bytes went from a client to the server (a flaky link)."""

    def __init__(self, port: int, cut_every: int) -> None:
        self.target = port
        self.cut_every = cut_every
        self.forwarded = 0
        self.cuts = 0
        self._since_cut = 0
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if upstream:
                    with self._lock:
                        room = self.cut_every - self._since_cut
                        cut = len(data) >= room
                        if cut:
                            data = data[:room]
                            self._since_cut = 0
                            self.cuts += 1
                        else:
                            self._since_cut += len(data)
                        self.forwarded += len(data)
                    dst.sendall(data)
                    if cut:
                        break
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.listener.close()


def tus_upload(
    service: scale.Service, csv_path: Path, name: str, cut_every: int, chunk: int
) -> dict[str, Any]:
    """The file through tuspy and the cutting proxy; the upload's figures and dataset id."""
    import requests
    from tusclient import client as tus

    port = int(service.base.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_every)
    auth = {"Authorization": f"Bearer {service.key}"}
    try:
        uploader = tus.TusClient(f"http://127.0.0.1:{proxy.port}/api/v1/uploads", headers=auth)
        up = uploader.uploader(
            str(csv_path),
            chunk_size=chunk,
            metadata={"name": name, "target": "target", "filename": csv_path.name},
            retries=1000,
            retry_delay=0,
            upload_checksum=True,
            store_url=False,
        )
        start = time.perf_counter()
        up.upload()
        seconds = time.perf_counter() - start
        head = requests.head(up.url, headers={**auth, "Tus-Resumable": "1.0.0"}, timeout=60)
    finally:
        proxy.close()
    dataset_id = head.headers.get("Upload-Dataset-Id")
    if not dataset_id:
        raise RuntimeError(f"the finished upload names no dataset: {dict(head.headers)}")
    return {
        "seconds": seconds,
        "cuts": proxy.cuts,
        "forwarded_bytes": proxy.forwarded,
        "dataset_id": dataset_id,
    }


def head(source: Path, out: Path, rows: int) -> None:
    """The header and the first `rows` rows of a CSV file."""
    with open(source, "rb") as src, open(out, "wb") as dst:
        for i, line in enumerate(src):
            if i > rows:
                break
            dst.write(line)


def predict(service: scale.Service, model_id: str, dataset_id: str) -> dict[str, Any]:
    """The batch prediction job, polled; its JSON."""
    import requests

    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {service.key}"
    r = http.post(
        f"{service.base}/api/v1/models/{model_id}/predictions",
        json={"dataset_id": dataset_id},
        timeout=60,
    )
    if r.status_code != 202:
        raise RuntimeError(f"predictions answered {r.status_code}: {r.text[:1000]}")
    job_id = r.json()["id"]
    while True:
        job = http.get(f"{service.base}/api/v1/jobs/{job_id}", timeout=60).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(scale.SAMPLE_EVERY)
    if job["status"] != "succeeded":
        raise RuntimeError(f"prediction job {job_id} ended {job['status']}: {job.get('error')}")
    return job


def download(service: scale.Service, url: str) -> dict[str, Any]:
    """The predictions as CSV, streamed and counted, never kept."""
    import requests

    start = time.perf_counter()
    first = None
    size = lines = 0
    with requests.get(
        f"{service.base}{url}",
        headers={"Authorization": f"Bearer {service.key}", "Accept": "text/csv"},
        stream=True,
        timeout=(10, 3600),
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"download answered {r.status_code}: {r.text[:1000]}")
        for piece in r.iter_content(1 << 20):
            if first is None:
                first = time.perf_counter() - start
            size += len(piece)
            lines += piece.count(b"\n")
    seconds = time.perf_counter() - start
    return {"first_byte_s": first, "seconds": seconds, "bytes": size, "rows": lines - 1}


def torch_child(parquet: Path, out: Path) -> None:
    """The PyTorch side: encode each row group, the same MLP forward, CSV of probabilities."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(1)
    pf = pq.ParquetFile(parquet)
    targets = pq.read_table(parquet, columns=["target"]).column(0).to_numpy()
    train, _ = scale.split(targets.astype(np.int64))
    del targets
    stats = scale._read_fit_sample(parquet, train)
    width = scale.NUMERIC + len(stats["color"]["levels"]) + len(stats["city"]["levels"])
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(width, 64), torch.nn.Tanh(), torch.nn.Linear(64, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 1),
    )  # fmt: skip
    schema = pa.schema([("label", pa.int64()), ("probability_0", pa.float64()),
                        ("probability_1", pa.float64())])  # fmt: skip
    start = time.perf_counter()
    rows = 0
    with (
        open(out.with_suffix(".csv"), "wb") as sink,
        pacsv.CSVWriter(sink, schema) as writer,
        torch.no_grad(),
    ):
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g)
            x = torch.from_numpy(scale.encode_table(table, stats))
            p1 = torch.sigmoid(net(x)).squeeze(1).double().numpy()
            label = (p1 >= 0.5).astype(np.int64)
            writer.write_table(pa.table([label, 1.0 - p1, p1], schema=schema))
            rows += table.num_rows
    seconds = time.perf_counter() - start
    out.write_text(json.dumps({"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}))


def run_torch(parquet: Path, folder: Path, logs: Path) -> dict[str, Any]:
    import subprocess

    out = folder / "torch.json"
    cmd = [sys.executable, __file__, "--child", "--parquet", str(parquet), "--child-out", str(out)]
    with open(logs / "torch-predict.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        with scale.Sampler(lambda: scale.tree_rss_anon(proc.pid)) as mem:
            code = proc.wait()
    if code != 0:
        raise RuntimeError(f"torch child exited {code}: {(logs / 'torch-predict.log').read_text()}")
    report = json.loads(out.read_text())
    report["peak_mib"] = mem.peak / MiB
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.folder or tempfile.mkdtemp(prefix="trainyard-large-io-"))
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    csv_path, parquet = folder / "table.csv", folder / "table.parquet"
    report: dict[str, Any] = {"machine": scale.machine(), "mode": args.mode, "args": vars(args)}
    print(f"generating {args.rows:,} rows in {folder}", flush=True)
    report["table"] = scale.generate(csv_path, parquet, args.rows)
    mb = report["table"]["csv_bytes"] / 1e6
    print(f"  {mb:,.0f} MB of CSV", flush=True)
    env = scale.thread_env(1)
    with scale.SERVICES[args.mode](folder, logs, env) as service:
        import requests

        # Both uploads' peaks are taken above the API's idle RssAnon on a fresh start (what a
        # process keeps after one upload would hide the next one's growth); tus goes first.
        idle = scale.idle(service.api_memory)
        report["api_idle_mib"] = idle / MiB
        with scale.Sampler(service.api_memory) as mem:
            tus = tus_upload(
                service, csv_path, "tus", int(args.cut_mb * 10**6), int(args.chunk_mb * MiB)
            )
        auth = {"Authorization": f"Bearer {service.key}"}
        made = requests.get(
            f"{service.base}/api/v1/datasets/{tus['dataset_id']}", headers=auth, timeout=60
        ).json()
        tus.update(
            mb_per_s=mb / tus["seconds"],
            api_peak_above_idle_mib=(mem.peak - idle) / MiB,
            rows=made["n_samples"],
            checksum=made["storage"]["checksum"],
        )
        print(f"tus upload: {tus}", flush=True)
        with scale.Sampler(service.api_memory) as mem:
            plain, seconds = scale.upload(service, csv_path, "plain")
        report["plain"] = {
            "seconds": seconds,
            "mb_per_s": mb / seconds,
            "api_peak_above_idle_mib": (mem.peak - idle) / MiB,
            "rows": plain["n_samples"],
            "checksum": plain["storage"]["checksum"],
        }
        print(f"plain upload: {report['plain']}", flush=True)
        tus["same_dataset"] = (
            tus["checksum"] == plain["storage"]["checksum"] and tus["rows"] == plain["n_samples"]
        )
        report["tus"] = tus

        train_csv = folder / "train.csv"
        head(csv_path, train_csv, args.train_rows)
        train, _ = scale.upload(service, train_csv, "train")
        job = scale.train_job(service, train["id"], args.epochs)
        model_id = job["model_id"]
        worker_idle = scale.idle(service.worker_memory)
        with scale.Sampler(service.worker_memory) as wmem:
            pjob = predict(service, model_id, plain["id"])
        seconds = scale._seconds(pjob["started_at"], pjob["finished_at"])
        report["predict"] = {"job_s": seconds, "rows_per_s": args.rows / seconds,
                             "worker_peak_mib": wmem.peak / MiB,
                             "worker_idle_mib": worker_idle / MiB}  # fmt: skip
        print(f"batch predictions: {report['predict']}", flush=True)
        got = download(service, pjob["download_url"])
        got["mb_per_s"] = got["bytes"] / 1e6 / got["seconds"]
        got["rows_per_s"] = got["rows"] / got["seconds"]
        got["all_rows"] = got["rows"] == args.rows
        report["download"] = got
        print(f"download: {got}", flush=True)
    if not args.no_torch and scale.have("torch"):
        report["torch"] = run_torch(parquet, folder, logs)
        report["predict"]["vs_torch"] = (
            report["predict"]["rows_per_s"] / report["torch"]["rows_per_s"]
        )
        print(f"PyTorch: {report['torch']}", flush=True)
    report["load"] = os.getloadavg()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--mode", choices=sorted(scale.SERVICES), default="embedded")
    parser.add_argument("--cut-mb", type=float, default=200)
    parser.add_argument("--chunk-mb", type=float, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--folder", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parquet", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        torch_child(Path(args.parquet), Path(args.child_out))
        return
    report = run(args)
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
