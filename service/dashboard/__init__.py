"""The web dashboard, served by the API's Flask app at `/`.

Pages: jobs (`/`), one job (`/jobs/<id>`), datasets (`/datasets`, with the CSV upload), one
dataset (`/datasets/<id>`), sweeps (`/sweeps`, with the new-sweep form), one sweep
(`/sweeps/<id>`), the model registry (`/registry`, one name at `/registry/<name>`), the
comparison of jobs picked on the jobs page (`/compare?jobs=a,b`), the owner's API keys
(`/keys`) and audit log (`/audit`).
They are a static shell: no data is rendered on the server and no
key is needed to load them. The page scripts (static/) fetch everything from `/api/v1` with the
API key that the browser keeps in localStorage (given once as `/#token=KEY`, or pasted into the
key form). Everything is written for a strict Content-Security-Policy: no inline scripts or
styles, no event-handler attributes, user text inserted with `textContent`; charts by the
vendored Chart.js (static/vendor/), the confusion matrix as a table shaded by CSS classes.
"""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/dashboard/static",
)

# The pages' Content-Security-Policy, nosniff and Referrer-Policy come from the app-wide
# `service.security.add_security_headers` (one policy for every HTML answer).


@bp.route("/")
def jobs_page() -> str:
    """The jobs table (filled in by static/jobs.js)."""
    return render_template("dashboard/jobs.html")


@bp.route("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    """One job: loss curve, spec, metrics, graph, weights, predict (static/job.js)."""
    return render_template("dashboard/job.html", job_id=job_id)


@bp.route("/datasets")
def datasets_page() -> str:
    """The datasets table and the CSV upload form (static/datasets.js)."""
    return render_template("dashboard/datasets.html")


@bp.route("/datasets/<dataset_id>")
def dataset_page(dataset_id: str) -> str:
    """One dataset: its target and columns with types, missing counts and stats
    (static/datasets.js)."""
    return render_template("dashboard/dataset.html", dataset_id=dataset_id)


@bp.route("/sweeps")
def sweeps_page() -> str:
    """The sweeps table and the new-sweep form (static/sweeps.js)."""
    return render_template("dashboard/sweeps.html")


@bp.route("/sweeps/<sweep_id>")
def sweep_page(sweep_id: str) -> str:
    """One sweep: its trials (sortable, live), their validation-loss curves overlaid, each
    parameter against the metric (static/sweep.js)."""
    return render_template("dashboard/sweep.html", sweep_id=sweep_id)


@bp.route("/registry")
def registry_page() -> str:
    """Registered models: names, latest versions, aliases (static/registry.js)."""
    return render_template("dashboard/registry.html", name="")


@bp.route("/registry/<name>")
def registered_page(name: str) -> str:
    """One registered model: its versions (with their models' jobs) and its aliases with the
    history of their moves (static/registry.js)."""
    return render_template("dashboard/registry.html", name=name)


@bp.route("/compare")
def compare_page() -> str:
    """Jobs side by side (`?jobs=ID,ID,...`): loss curves overlaid, the spec fields where they
    differ, their metrics (static/compare.js)."""
    return render_template("dashboard/compare.html")


@bp.route("/keys")
def keys_page() -> str:
    """The owner's API keys: create (shown once), revoke with a confirmation (static/account.js)."""
    return render_template("dashboard/keys.html")


@bp.route("/audit")
def audit_page() -> str:
    """The owner's audit log, newest first, paginated and filtered by action
    (static/account.js)."""
    return render_template("dashboard/audit.html")
