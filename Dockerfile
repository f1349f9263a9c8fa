# syntax=docker/dockerfile:1
# Two images from one file, both on NVIDIA's TensorRT image (TensorRT, trtexec, CUDA):
#   docker build --target export -t clipexport:export .   # export, quantize, build engines, verify
#   docker build --target serve  -t clipexport:serve  .   # the torch-free runtime only
# Jetson (L4T) has its own base image; see "Docker" in the README.
ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3

FROM ${TRT_IMAGE} AS source
WORKDIR /opt/clipexport
COPY pyproject.toml README.md ./
COPY clipexport ./clipexport
COPY recipes ./recipes
COPY calibration ./calibration
ENV CLIPEXPORT_RECIPES_DIR=/opt/clipexport/recipes \
    CLIPEXPORT_CALIBRATION_DIR=/opt/clipexport/calibration \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- export: torch, open_clip, transformers, ModelOpt; TensorRT comes with the base image ----
FROM source AS export
RUN pip install '.[precision]' \
 && python -c "import tensorrt, clipexport.trt.builder; print('TensorRT', tensorrt.__version__)"
ENTRYPOINT ["clipexport"]
CMD ["--help"]

# ---- serve: numpy, pillow, onnxruntime-gpu, polygraphy (CUDA memory for TensorRT); no torch ----
FROM ${TRT_IMAGE} AS serve
WORKDIR /opt/clipexport
COPY --from=source /opt/clipexport /opt/clipexport
ENV CLIPEXPORT_RECIPES_DIR=/opt/clipexport/recipes PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install '.[runtime]' 'polygraphy>=0.53' \
 && python -c "import sys, clipexport.runtime, clipexport.runtime.backends.tensorrt; \
assert not {'torch', 'open_clip', 'transformers', 'modelopt'} & set(sys.modules), 'torch leaked into the serving image'" \
 && ! python -c "import torch" 2>/dev/null
ENTRYPOINT ["clipexport"]
CMD ["--help"]
