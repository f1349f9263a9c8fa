"""`clipexport triton ARTIFACT -o REPO`: a Triton model repository from an artifact's manifest.

    <name>_vision_tower, <name>_text_tower   onnxruntime_onnx (a graph variant) or tensorrt_plan (the built engines)
    <name>_preprocess                         python: encoded image bytes -> float32 [3,H,W] (the runtime's preprocessing)
    <name>_tokenize                           python: UTF-8 text -> int64 ids (the runtime's tokenizer, length buckets)
    <name>_image, <name>_text                 ensembles: bytes -> embedding, text -> embedding

The towers are named `_tower` because the ensembles take the plain `<name>_image` / `<name>_text`
names clients call. The repository is written atomically and `--overwrite` replaces only a
repository this command wrote.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from clipexport.artifact.layout import engine_file
from clipexport.inputs import served_name
from clipexport.artifact.manifest import Manifest, Tower, check_graph_files, read_manifest
from clipexport.artifact.precision import Precision
from clipexport.artifact.provenance import read_sidecar
from clipexport.errors import InputError
from clipexport.files import publish_folder, staging_folder, write_json_atomic
from clipexport.progress import Progress, silent
from clipexport.runtime.backends import BackendKind, TritonServing, triton_serving
from clipexport.serving.backend_models import DEFAULT_BUCKETS
from clipexport.serving.pbtxt import Batching, ModelConfig, Step, Tensor

MARKER = ".clipexport-repository.json"  # what makes a folder one `--overwrite` may replace
ARTIFACT_COPY = "artifact"  # the python models' copy of manifest.json (+ tokenizer.json), in their version folder
DEFAULT_MAX_BATCH = 64
DEFAULT_QUEUE_DELAY_US = 2000


class InstanceKind(str, Enum):
    GPU = "KIND_GPU"
    CPU = "KIND_CPU"


@dataclass(frozen=True)
class RepositoryOptions:
    artifact: Path
    output: Path
    name: str | None = None  # default: the artifact folder's name
    platform: BackendKind = BackendKind.ONNXRUNTIME  # what runs the towers: its module's TRITON says how
    precision: Precision = Precision.FP32
    max_batch_size: int | None = None  # default: 64, or the engine profile's max batch for TensorRT
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instance_kind: InstanceKind = InstanceKind.GPU
    instances: int = 1
    python_instances: int = 1
    cuda_graphs: bool = False
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    overwrite: bool = False


def write_repository(options: RepositoryOptions, progress: Progress = silent) -> list[str]:
    """Write the repository; returns the model names."""
    artifact = Path(options.artifact)
    manifest = read_manifest(artifact)
    name = served_name(options.name, artifact)
    _check_options(options, manifest)
    output = Path(options.output).expanduser().absolute()
    _check_output(output, options.overwrite, artifact.resolve())
    with staging_folder(
        output.parent, f".{output.name}.partial-", "triton", "choose a writable --output", progress, public=True
    ) as staging:
        models = _write_models(staging, artifact, manifest, name, options, progress)
        (staging / "README.md").write_text(_readme(name, manifest, options), encoding="utf-8")
        write_json_atomic(staging / MARKER, {"artifact": str(artifact.resolve()), "models": models})
        publish_folder(staging, output)
    return models


def servable_backends() -> tuple[BackendKind, ...]:
    """The backends Triton can serve towers with (`triton --platform` choices)."""
    return tuple(kind for kind in BackendKind if triton_serving(kind) is not None)


def tower_serving(kind: BackendKind | str) -> TritonServing:
    serving = triton_serving(kind)
    if serving is None:
        raise InputError(
            f"Triton cannot serve towers on {BackendKind.parse(kind).value}; pass --platform "
            f"{' or '.join(k.value for k in servable_backends())}"
        )
    return serving


def _check_options(options: RepositoryOptions, manifest: Manifest) -> None:
    tower_serving(options.platform)
    for value, what in (
        (options.instances, "--instances"),
        (options.python_instances, "--python-instances"),
        (options.max_batch_size or 1, "--max-batch"),
    ):
        if value < 1:
            raise InputError(f"{what} must be at least 1")
    if options.max_queue_delay_us < 0:
        raise InputError("--max-queue-delay-us cannot be negative")
    for tower in Tower:
        artifact = manifest.tower(tower)
        if options.precision not in artifact.graphs:
            have = ", ".join(p.value for p in artifact.graphs)
            raise InputError(
                f"no {options.precision.value} graph for the {tower.value} tower (have: {have}); "
                f"create it with: clipexport quantize ARTIFACT --precision {options.precision.value}"
            )
        if artifact.graphs[options.precision].details.io_dtype != "float32":
            raise InputError(
                f"the {options.precision.value} graphs take {artifact.graphs[options.precision].details.io_dtype} "
                "inputs; the ensembles pass float32: re-create them with --io-dtype float32 (the default)"
            )
    if manifest.tokenizer.kind not in ("clip_bpe", "hf_json"):
        raise InputError(
            f"the artifact's tokenizer ({manifest.tokenizer.kind}) has no torch-free implementation for "
            "the tokenize model; re-export with a tokenizer that has a tokenizer.json"
        )


def _check_output(output: Path, overwrite: bool, artifact: Path) -> None:
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise InputError(f"output {output} is a file or a link; pass a new folder with --output")
    if output == artifact or artifact in output.parents or output in artifact.parents:
        raise InputError(f"output {output} would contain or sit inside the artifact; choose another --output")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise InputError(f"output folder {output} is not empty; pass --overwrite to replace an earlier repository")
        if not (output / MARKER).is_file():
            raise InputError(
                f"--overwrite only replaces a repository written by clipexport triton, and {output} is not "
                "one; refusing to delete it: choose a new or empty --output"
            )


def _write_models(
    root: Path, artifact: Path, manifest: Manifest, name: str, options: RepositoryOptions, progress: Progress
) -> list[str]:
    dim = manifest.embed_dim
    towers = {}
    for tower in Tower:
        towers[tower] = _write_tower(root, artifact, manifest, name, tower, options, progress)
    vision, text = manifest.tower(Tower.VISION), manifest.tower(Tower.TEXT)
    h, w = manifest.preprocess.image_size
    python_batching = Batching(max(t.max_batch_size for t in towers.values()), (), options.max_queue_delay_us)
    preprocess = ModelConfig(
        f"{name}_preprocess",
        [Tensor("IMAGE", "bytes", (1,))],
        [Tensor("PIXELS", "float32", (3, h, w))],
        python_batching.max_batch_size,
        backend="python",
        batching=python_batching,
        instance_kind=InstanceKind.CPU.value,
        instances=options.python_instances,
        parameters={"artifact": ARTIFACT_COPY},
    )
    length = -1 if text.properties.trimmable else manifest.tokenizer.context_length
    tokenize = ModelConfig(
        f"{name}_tokenize",
        [Tensor("TEXT", "bytes", (1,))],
        [Tensor("INPUT_IDS", "int64", (length,))],
        python_batching.max_batch_size,
        backend="python",
        batching=python_batching,
        instance_kind=InstanceKind.CPU.value,
        instances=options.python_instances,
        parameters={"artifact": ARTIFACT_COPY, "buckets": ",".join(map(str, options.buckets))},
    )
    for config, model_class in ((preprocess, "PreprocessModel"), (tokenize, "TokenizeModel")):
        write_python_model(root, config, model_class, artifact, manifest)
    image = ModelConfig(
        f"{name}_image",
        [Tensor("IMAGE", "bytes", (1,))],
        [Tensor("EMBEDDING", "float32", (dim,))],
        towers[Tower.VISION].max_batch_size,
        platform="ensemble",
        steps=[
            Step(preprocess.name, {"IMAGE": "IMAGE"}, {"PIXELS": "pixels"}),
            Step(towers[Tower.VISION].name, {vision.inputs[0].name: "pixels"}, {vision.outputs[0].name: "EMBEDDING"}),
        ],
    )
    text_ensemble = ModelConfig(
        f"{name}_text",
        [Tensor("TEXT", "bytes", (1,))],
        [Tensor("EMBEDDING", "float32", (dim,))],
        towers[Tower.TEXT].max_batch_size,
        platform="ensemble",
        steps=[
            Step(tokenize.name, {"TEXT": "TEXT"}, {"INPUT_IDS": "input_ids"}),
            Step(towers[Tower.TEXT].name, {text.inputs[0].name: "input_ids"}, {text.outputs[0].name: "EMBEDDING"}),
        ],
    )
    for config in (image, text_ensemble):
        _write_config(root, config)
        (root / config.name / "1").mkdir()  # Triton wants a version folder, even an empty one for ensembles
    return [c.name for c in (*towers.values(), preprocess, tokenize, image, text_ensemble)]


def _write_tower(
    root: Path,
    artifact: Path,
    manifest: Manifest,
    name: str,
    tower: Tower,
    options: RepositoryOptions,
    progress: Progress,
) -> ModelConfig:
    spec = manifest.tower(tower)
    model = f"{name}_{tower.value}_tower"
    version = root / model / "1"
    version.mkdir(parents=True)
    inputs = [
        Tensor(i.name, i.dtype, tuple(-1 if isinstance(d, str) else int(d) for d in i.shape[1:])) for i in spec.inputs
    ]
    outputs = [Tensor(o.name, o.dtype, (manifest.embed_dim,)) for o in spec.outputs]
    max_batch = options.max_batch_size or DEFAULT_MAX_BATCH
    cc_files: dict[str, str] = {}
    serving = tower_serving(options.platform)
    if serving.engine:
        plan = artifact / engine_file(tower.value, options.precision)
        rebuild = f"clipexport build {artifact} --precision {options.precision.value}"
        provenance = read_sidecar(plan, rebuild)
        profile_max = min(int(p["max"][0]) for p in provenance.profiles.values())
        if options.max_batch_size and options.max_batch_size > profile_max:
            raise InputError(
                f"--max-batch {options.max_batch_size} exceeds the {tower.value} engine's profile (max batch "
                f"{profile_max}); rebuild with a larger profile or pass --max-batch {profile_max}"
            )
        max_batch = options.max_batch_size or profile_max
        # Engines only run on the GPU architecture they were built for: pin the file to it, so a
        # server on another GPU refuses to load the model instead of failing at the first request.
        filename = f"model_sm{provenance.compute_capability.replace('.', '')}.plan"
        progress(f"copying the {tower.value} engine ({provenance.gpu_name}, sm_{provenance.compute_capability})")
        shutil.copy2(plan, version / filename)
        cc_files[provenance.compute_capability] = filename
    else:
        graph = spec.graph(options.precision)
        path = check_graph_files(artifact, graph)
        progress(f"copying the {tower.value} graph ({graph.file})")
        shutil.copy2(path, version / "model.onnx")
        if graph.external_data:  # the graph names its data file; it keeps that name beside model.onnx
            shutil.copy2(artifact / graph.external_data, version / Path(graph.external_data).name)
    preferred = tuple(b for b in options.preferred_batch_sizes if b <= max_batch)
    config = ModelConfig(
        model,
        inputs,
        outputs,
        max_batch,
        platform=serving.platform,
        backend=serving.backend,
        default_model_filename=serving.default_model_filename,
        batching=Batching(max_batch, preferred, options.max_queue_delay_us),
        instance_kind=options.instance_kind.value,
        instances=options.instances,
        cc_model_filenames=cc_files,
        cuda_graphs=options.cuda_graphs and serving.engine,
    )
    _write_config(root, config)
    return config


def write_python_model(
    root: Path, config: ModelConfig, model_class: str, artifact: Path | None = None, manifest: Manifest | None = None
) -> None:
    """A python-backend model: config.pbtxt and a one-line model.py naming the class in
    `serving.backend_models` (the logic stays in the installed package). With `artifact`, the
    manifest (and tokenizer.json) are copied beside it, for a repository that travels."""
    version = root / config.name / "1"
    version.mkdir(parents=True)
    if artifact is not None and manifest is not None:
        copy = version / ARTIFACT_COPY
        copy.mkdir()
        shutil.copy2(artifact / "manifest.json", copy / "manifest.json")
        if manifest.tokenizer.file:
            shutil.copy2(artifact / manifest.tokenizer.file, copy / manifest.tokenizer.file)
    (version / "model.py").write_text(
        f'"""Written by clipexport: the logic lives in the installed clipexport package (pip install \'clipexport[runtime]\')."""\n'
        f"from clipexport.serving.backend_models import {model_class} as TritonPythonModel  # noqa: F401\n",
        encoding="utf-8",
    )
    _write_config(root, config)


def _write_config(root: Path, config: ModelConfig) -> None:
    folder = root / config.name
    folder.mkdir(exist_ok=True)
    (folder / "config.pbtxt").write_text(config.text(), encoding="utf-8")


def _readme(name: str, manifest: Manifest, options: RepositoryOptions) -> str:
    gpu = "--gpus all " if options.instance_kind is InstanceKind.GPU else ""
    return f"""# Triton model repository for `{name}` (written by `clipexport triton`)

Models: `{name}_image` (encoded image bytes -> {manifest.embed_dim}-d embedding) and `{name}_text`
(UTF-8 text -> embedding) are ensembles of `{name}_preprocess` / `{name}_tokenize` (python backend,
clipexport's torch-free preprocessing and tokenizer) and `{name}_vision_tower` / `{name}_text_tower`
({tower_serving(options.platform).platform or tower_serving(options.platform).backend}, {options.precision.value}). Embeddings are L2-normalised
(manifest: normalized={manifest.normalized}).

## Run it

The python-backend models need clipexport's runtime in the server's Python:

```bash
docker run --rm {gpu}-p8000:8000 -p8001:8001 -p8002:8002 -v $PWD:/models \\
  nvcr.io/nvidia/tritonserver:25.01-py3 \\
  bash -c "pip install 'clipexport[runtime]' && tritonserver --model-repository /models"
```

## Call it

```bash
curl -s localhost:8000/v2/health/ready && echo ready
curl -s localhost:8000/v2/models/{name}_text/infer -H 'Content-Type: application/json' -d \\
  '{{"inputs":[{{"name":"TEXT","shape":[1,1],"datatype":"BYTES","data":["a photo of a cat"]}}]}}'
```

```python
from clipexport.client import ClipClient   # pip install 'clipexport[client]'
client = ClipClient("localhost:8000", model="{name}")      # or "grpc://localhost:8001"
text = client.encode_text(["a photo of a cat", "a photo of a dog"])
image = client.encode_image(["cat.jpg"])
```

Text batching: Triton batches only requests whose tensors have the same shape. The tokenize
model cuts each request's ids after its last real token and pads them up to the next length
bucket ({", ".join(map(str, options.buckets))}, then {manifest.tokenizer.context_length}), so short
prompts batch together and skip most of the padding
{"(this text graph is fixed-length: ids always have the context length)" if not manifest.tower(Tower.TEXT).properties.trimmable else ""}.
A corrupt image or an empty text fails only its own request.
"""
