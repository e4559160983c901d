# syntax=docker/dockerfile:1
# gpuadmit operator image: the wheel is built in one stage and installed into a clean virtualenv
# in a second, so the final image carries no compiler, no pip cache and no source tree.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m pip install --no-cache-dir "build==1.2.2"
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m build --wheel --outdir /dist . \
 && python -m venv /opt/gpuadmit \
 && /opt/gpuadmit/bin/pip install --no-cache-dir /dist/*.whl

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="gpuadmit" \
      org.opencontainers.image.description="Admit, queue or reject GPU workloads by the margin each GPU-hour earns" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/gpuadmit/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/gpuadmit /opt/gpuadmit
# A numeric non-root user, so runAsNonRoot can be verified by the kubelet.
USER 65532:65532
EXPOSE 8080 8081 9443
ENTRYPOINT ["gpuadmit", "run"]
