# keygate against an external PostgreSQL (DATABASE_URL): runtime dependencies only, no embedded
# PostgreSQL, running as an unprivileged numeric user. See "Container image" in the README.

# Builder: a virtualenv in /opt/keygate, installed by the same script the test suite runs.
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY migrations/ migrations/
COPY deploy/docker/install.sh deploy/docker/
RUN sh deploy/docker/install.sh /opt/keygate

# Runtime: the same base image (the virtualenv points at its /usr/local/bin/python3), the virtualenv only.
FROM python:3.11-slim
RUN groupadd --system --gid 10001 keygate \
    && useradd --system --uid 10001 --gid keygate --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin keygate
COPY --from=builder /opt/keygate /opt/keygate
ENV PATH=/opt/keygate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KEYGATE_LISTEN=0.0.0.0:50051 \
    KEYGATE_METRICS=0.0.0.0:9464
USER 10001:10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["keygate", "health"]
ENTRYPOINT ["keygate"]
CMD ["serve"]
