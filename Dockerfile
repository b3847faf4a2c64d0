# pgq and the example app (examples/), for docker-compose.yml.
# The database comes from PGQ_DSN; the embedded server is not installed here.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package from the source tree (only what the build needs).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pgq/ pgq/
RUN pip install . && rm -rf /src

# The example app: `pgq worker -A demo_tasks` imports demo_tasks.py from the current directory.
WORKDIR /app
COPY examples/ ./
RUN useradd --system --no-create-home pgq
USER pgq

CMD ["pgq", "worker", "-A", "demo_tasks"]
