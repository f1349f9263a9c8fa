"""`clipexport build` / `recipes` and the TensorRT backend's checks. Everything here runs without
TensorRT; the tests that need TensorRT and a GPU are marked and skip with the reason."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipexport.trt.profiles import TRTEXEC, plan_builds, profile_shapes
from clipexport.trt.recipe import DeviceClass, Range, TowerProfile, list_recipes, load_recipe, parse_recipe
from clipexport.artifact.provenance import (
    EngineProvenance,
    check_compatible,
    check_plan_file,
    read_sidecar,
    write_sidecar,
)
from clipexport.cli import main
from clipexport.errors import ClipExportError, InputError, ManifestError, MissingDependencyError
from clipexport.files import sha256_file
from clipexport.artifact.manifest import TensorSpec, Tower, read_manifest
from clipexport.artifact.precision import Precision, Target

REBUILD = "clipexport build DIR --precision fp16 --towers vision"


def test_every_shipped_recipe_validates() -> None:
    names = {load_recipe(p).name for p in list_recipes()}
    assert {
        "vit-b-32-server",
        "vit-l-14-server",
        "vit-b-32-orin-nano",
        "vit-b-32-agx-orin-int8",
        "rn50-server",
    } <= names
    nano = load_recipe(next(p for p in list_recipes() if p.stem == "vit-b-32-orin-nano"))
    assert nano.device_class is DeviceClass.JETSON and nano.precision == "fp16"
    assert nano.profiles[Tower.VISION].batch.max == 8 and nano.workspace_mib <= 2048
    for name in ("vit-b-32-server", "vit-l-14-server"):
        server = load_recipe(next(p for p in list_recipes() if p.stem == name))
        assert server.profiles[Tower.VISION].batch.max == 256


def _args(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) if "=" in arg else (arg[2:], "") for arg in command[1:])


@pytest.mark.parametrize("recipe_path", list_recipes(), ids=lambda p: p.stem)
def test_dry_run_commands_for_every_recipe(tiny_vit: Path, recipe_path: Path) -> None:
    recipe = load_recipe(recipe_path)
    manifest = read_manifest(tiny_vit)
    # The tiny artifact has only FP32 graphs: plan the recipe's towers at fp32 and at its own
    # precision through a manifest that claims the variant (dry-run never opens the graph); a
    # calibrated (INT8 / FP8) claim carries TensorRT's Q/DQ placement.
    for precision in dict.fromkeys(["fp32", recipe.precision]):
        fake = manifest
        for tower in Tower:
            graph = manifest.tower(tower).graphs["fp32"]  # an int8 claim carries TensorRT's Q/DQ placement
            fake = fake.with_graph(
                tower,
                precision,
                dataclasses.replace(
                    graph,
                    details=dataclasses.replace(
                        graph.details, target=Target.TENSORRT if Precision(precision).facts.calibrated else None
                    ),
                ),
            )
        for build in plan_builds(tiny_vit, fake, recipe, Precision(precision), tuple(Tower)):
            command = build.trtexec(recipe.device_class)
            assert command[0] == TRTEXEC[recipe.device_class]
            args = _args(command)
            size = fake.tower(build.tower).inputs[0].shape[1:]
            batch = recipe.profiles[build.tower].batch
            name = fake.tower(build.tower).inputs[0].name
            # A variable-length text graph's sequence axis defaults to 2 / 16 / context length.
            sequence = {"min": 2, "opt": 16, "max": fake.tokenizer.context_length}
            for key, which, b in (
                ("minShapes", "min", batch.min),
                ("optShapes", "opt", batch.opt),
                ("maxShapes", "max", batch.max),
            ):
                dims = [d if isinstance(d, int) else sequence[which] for d in size]
                assert args[key] == f"{name}:{'x'.join(map(str, (b, *dims)))}"
            assert args["onnx"] == str(build.onnx) and args["saveEngine"].endswith(
                f"engines/{build.tower.value}.{precision}.plan"
            )
            assert args["memPoolSize"] == f"workspace:{recipe.workspace_mib}M"
            assert ("stronglyTyped" in args) == (precision != "fp32")
            assert ("noTF32" in args) == (precision == "fp32")
            assert "skipInference" in args and args["timingCacheFile"].endswith("engines/timing.cache")
            assert shlex.split(build.command(recipe.device_class)) == command


def test_cli_dry_run_and_recipes(tiny_vit: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main, ["build", str(tiny_vit), "--precision", "fp32", "--recipe", "vit-b-32-orin-nano", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("/usr/src/tensorrt/bin/trtexec --onnx=") == 2 and "mkdir -p" in result.output
    assert "--maxShapes=image:8x3x64x64" in result.output and "--maxShapes=input_ids:8x77" in result.output
    assert "--minShapes=input_ids:1x2" in result.output and "--optShapes=input_ids:8x16" in result.output
    listed = runner.invoke(main, ["recipes"])
    assert listed.exit_code == 0 and "vit-b-32-agx-orin-int8" in listed.output
    shown = runner.invoke(main, ["recipes", "vit-l-14-server"])
    assert shown.exit_code == 0 and "profile vision: batch [1, 32, 256]" in shown.output
    missing = runner.invoke(main, ["build", str(tiny_vit), "--recipe", "no-such", "--dry-run"])
    assert (
        missing.exit_code == 2
        and "recipe 'no-such' not found" in missing.output
        and "vit-b-32-server" in missing.output
    )
    no_variant = runner.invoke(main, ["build", str(tiny_vit), "--precision", "int8", "--dry-run"])
    assert no_variant.exit_code == 2 and "no int8 graph" in no_variant.output


def test_build_without_tensorrt_is_one_line_with_the_install_hint(tiny_vit: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here, so the missing-TensorRT path cannot be exercised")
    except ImportError:
        pass
    result = CliRunner().invoke(main, ["build", str(tiny_vit), "--precision", "fp32"])
    assert result.exit_code == 3 and "Traceback" not in result.output  # 3: the environment lacks something
    assert "pip install 'clipexport[tensorrt]'" in result.output and "python3-libnvinfer" in result.output
    assert not (tiny_vit / "engines").exists()


BASE = {
    "recipe": {"name": "x", "device_class": "server", "device": "gpu"},
    "build": {"precision": "fp16"},
    "profiles": {"vision": {"batch": [1, 8, 32]}},
}


def _with(path: str, value) -> dict:
    import copy

    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("build.precision", "int4", "'build.precision' must be one of fp32, fp16, int8"),
        ("build.workspace", 10, "unknown key 'build.workspace'"),
        ("build.workspace_mib", "lots", "'build.workspace_mib' must be int"),
        ("build.workspace_mib", 0, "'build.workspace_mib' must be a positive"),
        ("build.optimization_level", 9, "'build.optimization_level' must be 0-5"),
        ("profiles.vision.batch", [8, 1, 32], "'profiles.vision.batch' must satisfy 1 <= min <= opt <= max"),
        ("profiles.vision.batch", [1, 8], "'profiles.vision.batch' must be three integers"),
        ("profiles.vision.sequence", [1, 8, 77], "'profiles.vision.sequence' only applies to the text tower"),
        ("profiles.audio", {"batch": [1, 1, 1]}, "unknown key 'profiles.audio'"),
        ("recipe.device_class", "phone", "'recipe.device_class' must be one of server, jetson"),
        ("recipe.name", None, None),
    ],
)
def test_invalid_recipe_names_the_key(path: str, value, message: str | None) -> None:
    data = _with(path, value)
    if value is None:
        del data["recipe"]["name"]
        message = "missing key 'recipe.name'"
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_recipe(data, "my.toml")


def test_hardware_compatible_is_refused_on_jetson(tmp_path: Path) -> None:
    data = _with("build.hardware_compatible", True)
    data["recipe"]["device_class"] = "jetson"
    with pytest.raises(InputError, match="not supported on Jetson"):
        parse_recipe(data, "j.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[recipe\nname = 1", encoding="utf-8")
    with pytest.raises(InputError, match="not valid TOML"):
        load_recipe(bad)


def test_profile_shapes_with_a_dynamic_sequence_axis() -> None:
    spec = TensorSpec("input_ids", "int64", ("batch", "sequence"))
    default = profile_shapes(spec, TowerProfile(Range(1, 8, 64)), 77, "r")
    assert (default.min, default.opt, default.max) == ((1, 2), (8, 16), (64, 77))
    custom = profile_shapes(spec, TowerProfile(Range(1, 8, 64), Range(4, 12, 32)), 77, "r")
    assert (custom.min, custom.opt, custom.max) == ((1, 4), (8, 12), (64, 32))
    with pytest.raises(InputError, match="exceeds the model's context length 77"):
        profile_shapes(spec, TowerProfile(Range(1, 8, 64), Range(4, 12, 100)), 77, "r")


def _provenance(plan: Path, **flags) -> EngineProvenance:
    return EngineProvenance(
        engine=plan.name,
        engine_sha256=sha256_file(plan),
        engine_bytes=plan.stat().st_size,
        tower="vision",
        precision="fp16",
        tensorrt_version="10.13.3.9",
        gpu_name="NVIDIA L4",
        compute_capability="8.9",
        onnx_file="vision.fp16.onnx",
        onnx_sha256="0" * 64,
        profiles={"image": {"min": [1], "opt": [8], "max": [32]}},
        flags={"version_compatible": False, "hardware_compatible": False, **flags},
        build_seconds=1.0,
        created="2026-11-23T00:00:00+00:00",
        recipe="test",
    )


@pytest.fixture()
def plan(tmp_path: Path) -> Path:
    path = tmp_path / "engines" / "vision.fp16.plan"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 64)
    return path


def test_sidecar_compatibility_rules(plan: Path) -> None:
    strict = _provenance(plan)
    assert check_compatible(strict, "10.13.3.9", "8.9", "NVIDIA L4", REBUILD) == []
    with pytest.raises(ManifestError, match="built with TensorRT 10.13.3.9 but this is TensorRT 10.14.1") as err:
        check_compatible(strict, "10.14.1.48", "8.9", "NVIDIA L4", REBUILD)
    assert REBUILD in str(err.value)
    with pytest.raises(ManifestError, match=r"built for NVIDIA L4 \(sm_89\) but this GPU is NVIDIA H100 \(sm_90\)"):
        check_compatible(strict, "10.13.3.9", "9.0", "NVIDIA H100", REBUILD)
    notes = check_compatible(strict, "10.13.3.9", "8.9", "NVIDIA L40S", REBUILD)  # same architecture
    assert notes and "NVIDIA L40S" in notes[0]

    portable = _provenance(plan, version_compatible=True, hardware_compatible=True)
    assert check_compatible(portable, "10.14.1.48", "9.0", "NVIDIA H100", REBUILD) == [
        notes[0].replace("NVIDIA L40S", "NVIDIA H100")
    ]
    with pytest.raises(ManifestError, match="runs on releases from that one through 11.x"):
        check_compatible(portable, "10.12.0.36", "9.0", "NVIDIA H100", REBUILD)
    # TensorRT 11 runs version-compatible 10.x engines (NVIDIA's 11.4 support matrix); 12 would not.
    assert check_compatible(portable, "11.4.0.7", "9.0", "NVIDIA H100", REBUILD) == [
        notes[0].replace("NVIDIA L40S", "NVIDIA H100")
    ]
    with pytest.raises(ManifestError, match="through 11.x"):
        check_compatible(portable, "12.0.0.1", "9.0", "NVIDIA H100", REBUILD)
    # Without version compatibility all four fields must match: the build number too.
    with pytest.raises(ManifestError, match="major.minor.patch.build"):
        check_compatible(strict, "10.13.3.10", "8.9", "NVIDIA L4", REBUILD)
    with pytest.raises(ManifestError, match="Ampere and newer"):
        check_compatible(portable, "10.13.3.9", "7.5", "Tesla T4", REBUILD)


def test_truncated_corrupt_or_unexplained_plans_are_refused(plan: Path) -> None:
    with pytest.raises(ManifestError, match="has no provenance file"):
        read_sidecar(plan, REBUILD)
    write_sidecar(plan, _provenance(plan))
    provenance = read_sidecar(plan, REBUILD)
    check_plan_file(plan, provenance, REBUILD)  # intact
    data = plan.read_bytes()
    plan.write_bytes(data[:-100])
    with pytest.raises(ManifestError, match="truncated or replaced"):
        check_plan_file(plan, provenance, REBUILD)
    plan.write_bytes(data[:-1] + b"\x00")
    with pytest.raises(ManifestError, match="corrupt or replaced"):
        check_plan_file(plan, provenance, REBUILD)
    plan.with_name(plan.name + ".json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match="unreadable"):
        read_sidecar(plan, REBUILD)
    plan.unlink()
    with pytest.raises(ManifestError, match="not found; build it with"):
        read_sidecar(plan, REBUILD)


def test_runtime_tensorrt_backend_errors_are_clear(tiny_vit: Path, tmp_path: Path) -> None:
    import shutil

    from clipexport.runtime import ClipRuntime

    artifact = tmp_path / "a"
    shutil.copytree(tiny_vit, artifact)
    try:
        import tensorrt  # noqa: F401

        with pytest.raises(ManifestError, match="not found; build it with: clipexport build"):
            ClipRuntime.load(artifact, backend="tensorrt")
    except ImportError:  # without TensorRT, the install hint comes before any "engine not found"
        with pytest.raises(MissingDependencyError, match="clipexport\\[tensorrt\\]"):
            ClipRuntime.load(artifact, backend="tensorrt")
    with pytest.raises(InputError, match="unknown backend 'tensorflow'"):
        ClipRuntime.load(artifact, backend="tensorflow")
    # A plan with matching provenance gets past the file checks, to TensorRT / the driver.
    for tower in ("vision", "text"):
        plan = artifact / "engines" / f"{tower}.fp32.plan"
        plan.parent.mkdir(exist_ok=True)
        plan.write_bytes(b"plan bytes")
        write_sidecar(plan, dataclasses.replace(_provenance(plan), tower=tower, precision="fp32"))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ClipExportError, match="clipexport\\[tensorrt\\]"):
            ClipRuntime.load(artifact, backend="tensorrt")


@pytest.mark.tensorrt
def test_build_and_verify_engines_on_gpu(tiny_vit: Path, tmp_path: Path) -> None:
    """Needs TensorRT and a GPU: build FP32 engines for the tiny model and check parity on them."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    import shutil

    from clipexport.trt.pipeline import BuildOptions, build_artifact
    from clipexport.verify.run import VerifyOptions, verify_artifact

    artifact = tmp_path / "a"
    shutil.copytree(tiny_vit, artifact)
    provenance = build_artifact(BuildOptions(artifact=artifact, precision="fp32")).engines
    assert {p.tower for p in provenance} == {"vision", "text"}
    report = verify_artifact(VerifyOptions(artifact=artifact, backends=("tensorrt",)))
    assert report.passed, report.table()


@pytest.mark.tensorrt
def test_onnxruntime_trt_meets_the_gates_on_a_gpu(tiny_vit: Path) -> None:
    """Needs onnxruntime-gpu with its TensorRT provider and a GPU: parity of the graphs run there."""
    from clipexport.runtime.backends import unavailable
    from clipexport.verify.run import VerifyOptions, verify_artifact

    problem = unavailable("onnxruntime-trt")
    if problem is not None:
        pytest.skip(f"ONNX Runtime's TensorRT provider cannot run here: {problem}")
    report = verify_artifact(VerifyOptions(artifact=tiny_vit, backends=("onnxruntime-trt",), write_report=False))
    assert report.passed, report.table()
