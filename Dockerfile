# The textloop image: the CLI (`pipeline` service), the ML backend (`ml-backend`) and Jupyter.
# Build a light image (detection, redaction, Label Studio; no training, no torch) with
#   docker build --build-arg TEXTLOOP_EXTRAS=dev .
FROM python:3.11-slim

# `train` adds torch (CPU-only wheels below) for training and Faster R-CNN bundles; without it the
# image runs harvest/predict/redact/rank/push/pull/curate/serve on onnxruntime.
ARG TEXTLOOP_EXTRAS=train,dev

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    SENTRY_OPT_OUT=1 FASTDUP_PRODUCTION=1 LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    TEXTLOOP_WORKSPACE=/workspace

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# With the train extra: CPU-only torch first (the default index would pull ~3 GB of CUDA wheels),
# then the package (editable, so labelstudio/label_config.xml stays next to it).
RUN case ",${TEXTLOOP_EXTRAS}," in *,train,*) \
      pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu ;; \
    esac
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY labelstudio ./labelstudio
COPY scripts ./scripts
COPY notebooks ./notebooks
RUN pip install -e ".[${TEXTLOOP_EXTRAS}]" jupyterlab

RUN useradd --create-home --uid 1000 textloop && mkdir -p /workspace && chown textloop /workspace
USER textloop
VOLUME ["/workspace"]
EXPOSE 9090
ENTRYPOINT ["textloop"]
CMD ["--help"]
