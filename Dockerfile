# The operator image: slim Python, dependencies built in a throwaway stage, non-root at run time.
# The base is named by digest (a tag moves; a digest does not). Update both stages together:
#   docker buildx imagetools inspect python:3.11-slim-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies from the hashed lock only (`make lock-operator`), then the package itself without them.
COPY requirements-operator.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile --require-hashes -r requirements-operator.lock
COPY pyproject.toml README.md ./
COPY kserve_operator ./kserve_operator
RUN /opt/venv/bin/pip install --no-compile --no-deps . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kserve-operator" \
      org.opencontainers.image.description="KServe pre-warming, Istio canaries and serverless Memcached"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 operator \
    && useradd --system --uid 10001 --gid operator --no-create-home --shell /usr/sbin/nologin operator
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "kserve_operator"]
CMD ["--all-namespaces"]
