# The operator image: slim Python, dependencies built in a throwaway stage, non-root at run time.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY kserve_operator ./kserve_operator
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
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
