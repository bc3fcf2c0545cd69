# One image for every Dromos process; the command picks the role (docker/entrypoint.sh):
#   gateway | broker | worker | beat | migrate | check | manage ARGS...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STATIC_ROOT=/app/staticfiles \
    PORT=8000

WORKDIR /app

# psycopg[binary], cryptography and orjson ship wheels: no compiler, no system libraries.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY manage.py ./
COPY dromos ./dromos
COPY broker_app ./broker_app
COPY gateway_app ./gateway_app
COPY templates ./templates
COPY docker ./docker

# Static assets (admin, offline API docs) collected once at build time; WhiteNoise serves them.
# The dummy secrets only let the settings import here; they are never part of the image's runtime.
RUN DEBUG=true DJANGO_SETTINGS_MODULE=dromos.settings.broker python manage.py collectstatic --noinput -v0 \
 && DEBUG=true DJANGO_SETTINGS_MODULE=dromos.settings.gateway python manage.py collectstatic --noinput -v0 \
 && chmod 0755 docker/entrypoint.sh \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin dromos \
 && mkdir -p /app/var && chown dromos /app/var

USER 10001
EXPOSE 8000
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["gateway"]
