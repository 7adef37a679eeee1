# One image for the web, worker and cron services of docker-compose.yml: the same code, each with
# its own command. Python 3.12 (Django 5.2 LTS); the pinned production requirements (psycopg 3).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements/ requirements/
RUN pip install -r requirements/prod.txt

COPY . .
# An unprivileged user. The staging mount point exists in the image, owned by that user, so a new
# named volume mounted there starts with that owner and web and workers can both write it.
RUN useradd --system --uid 1000 --home-dir /app app \
    && mkdir -p /srv/staging \
    && chown app:app /srv/staging
USER app

EXPOSE 8000
# uvicorn streams request bodies with backpressure (daphne buffers them in memory: see the README).
CMD ["uvicorn", "backend.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--lifespan", "off", \
     "--proxy-headers", "--forwarded-allow-ips", "*", "--timeout-graceful-shutdown", "30", \
     "--ws-per-message-deflate", "false"]
