# One image for the api, worker and migrate services of docker-compose.yml.
FROM python:3.11-slim

# graphviz: `dot` renders the computational-graph SVG saved with every model.
RUN apt-get update \
    && apt-get install -y --no-install-recommends graphviz \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
# The pinned lock (requirements.txt), as `make run` installs it; the code runs from /app (the
# working directory is on the import path of gunicorn, celery and alembic), where `alembic
# upgrade head` also finds alembic.ini and migrations/. The client is not part of the image.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY alembic.ini ./
COPY migrations ./migrations
COPY engine ./engine
COPY core ./core
COPY service ./service
COPY workers ./workers

RUN useradd --create-home --uid 10001 trainyard && mkdir -p var && chown trainyard var
USER trainyard

EXPOSE 8000
# worker class, threads, access log and hooks: workers/gunicorn_conf.py (the same in every mode)
CMD ["gunicorn", "--config", "python:workers.gunicorn_conf", "--bind", "0.0.0.0:8000", \
     "--workers", "2", "service:create_app()"]
