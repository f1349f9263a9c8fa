"""The two new targets through the registries: the OpenVINO backend (every verb takes it, every
precision runs within its gate, the device asked for or one line) and FP8 (ModelOpt E4M3 Q/DQ,
checked on ONNX Runtime at ORT_ENABLE_BASIC, refused where TensorRT has no FP8 kernels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipexport.artifact.manifest import Tower, read_manifest
from clipexport.bulk.dataset import read_manifest as read_dataset_manifest
from clipexport.artifact.precision import CalibrationMethod, MadeBy, Precision, Target
from clipexport.cli import main
from clipexport.errors import ClipExportError, DeviceUnavailableError, InputError
from clipexport.runtime import ClipRuntime

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The same ONNX graph on two runtimes: float32 kernels that sum in other orders (OpenVINO's oneDNN,
# ONNX Runtime's MLAS); measured on the demo CLIP: max abs 2.7e-7 for FP32 on unit vectors.
FP32_BETWEEN_RUNTIMES = 1e-5


@pytest.fixture(scope="module")
def demo(demo_quantized: Path) -> Path:
    return demo_quantized


def test_fp8_graph_is_recorded_like_int8(demo: Path) -> None:
    graph = read_manifest(demo).tower("vision").graph(Precision.FP8)
    details = graph.details
    assert details.target is Target.TENSORRT and details.calibration_method is CalibrationMethod.MAX
    assert details.made_by is MadeBy.QUANTIZE and "fp8" in details.method
    assert (
        details.quantized_nodes and details.high_precision_nodes["sensitive_by_default"]
    )  # patch embedding, projection
    import onnx

    model = onnx.load(str(demo / graph.file))
    q_types = {init.data_type for init in model.graph.initializer if "zero_point" in init.name}
    assert onnx.TensorProto.FLOAT8E4M3FN in q_types  # E4M3 Q/DQ, not INT8
    # LayerNorms and residual adds are never quantized: no Q/DQ feeds them.
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Add"):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input[:1])


def test_verify_gates_hold_for_every_precision_on_openvino_and_onnxruntime(demo: Path) -> None:
    from clipexport.verify.run import VerifyOptions, verify_artifact

    report = verify_artifact(
        VerifyOptions(
            artifact=demo, precisions=("all",), backends=("openvino", "onnxruntime"), num_images=8, write_report=False
        )
    )
    assert report.passed, report.table()
    cells = {(r.tower, r.precision, r.backend) for r in report.results}
    assert len(cells) == len(Tower) * len(Precision) * 2  # towers x every precision x backends
    ran = {r.backend: r.ran_on for r in report.results}
    assert ran["openvino"].startswith("openvino 20") and "CPU" in ran["openvino"]


def test_openvino_runtime_equals_onnxruntime_and_every_verb_takes_it(demo: Path, tmp_path: Path) -> None:
    images = sorted(EXAMPLES.glob("*.png"))
    texts = ["a red circle", "two small blue squares on the left", ""]
    with ClipRuntime.load(demo, backend="openvino") as ov, ClipRuntime.load(demo) as ort:
        np.testing.assert_allclose(ov.encode_image(images), ort.encode_image(images), atol=FP32_BETWEEN_RUNTIMES)
        np.testing.assert_allclose(ov.encode_text(texts), ort.encode_text(texts), atol=FP32_BETWEEN_RUNTIMES)
        assert ov.ran_on("vision").startswith("openvino")
    assert list((demo / "engines" / "openvino").iterdir())  # the compiled-model cache
    runner = CliRunner()
    classified = runner.invoke(
        main,
        [
            "classify",
            str(demo),
            str(EXAMPLES / "red-circle.png"),
            "--labels-file",
            str(EXAMPLES / "labels.txt"),
            "--template",
            "a {}.",
            "--backend",
            "openvino",
        ],
    )
    assert classified.exit_code == 0 and "red circle" in classified.output.splitlines()[0].split("  ")[1]
    embedded = runner.invoke(
        main,
        [
            "embed",
            str(demo),
            "--images",
            str(EXAMPLES),
            "-o",
            str(tmp_path / "ds"),
            "--backend",
            "openvino",
            "--precision",
            "int8",
            "-q",
        ],
    )
    assert embedded.exit_code == 0, embedded.output
    assert read_dataset_manifest(tmp_path / "ds")["backend"] == "openvino"
    bench = runner.invoke(
        main,
        [
            "bench",
            str(demo),
            "--backends",
            "openvino",
            "--precisions",
            "fp32,fp8",
            "--batch-sizes",
            "2",
            "--min-iterations",
            "1",
            "--min-seconds",
            "0",
            "-o",
            str(tmp_path / "bench"),
            "-q",
        ],
    )
    assert bench.exit_code == 0, bench.output
    repo = runner.invoke(
        main, ["triton", str(demo), "-o", str(tmp_path / "repo"), "--platform", "openvino", "--instance-kind", "cpu"]
    )
    assert repo.exit_code == 0, repo.output
    config = (tmp_path / "repo" / f"{demo.name}_vision_tower" / "config.pbtxt").read_text()
    assert 'backend: "openvino"' in config and 'default_model_filename: "model.onnx"' in config


def test_openvino_device_is_the_one_asked_or_one_line(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DeviceUnavailableError, match="no NPU device"):
        ClipRuntime.load(demo, backend="openvino", device="NPU")
    monkeypatch.setenv("CLIPEXPORT_OPENVINO_DEVICE", "GPU")  # verify / bench / serve take it from here
    with pytest.raises(DeviceUnavailableError, match="no GPU device"):
        ClipRuntime.load(demo, backend="openvino", towers=("text",))
    monkeypatch.delenv("CLIPEXPORT_OPENVINO_DEVICE")
    with pytest.raises(InputError, match="--device applies to --backend openvino"):
        ClipRuntime.load(demo, device="CPU")
    result = CliRunner().invoke(
        main,
        [
            "classify",
            str(demo),
            str(EXAMPLES / "red-circle.png"),
            "--labels",
            "a,b",
            "--backend",
            "openvino",
            "--device",
            "GPU",
        ],
    )
    assert result.exit_code == 3 and result.output.startswith("error: OpenVINO sees no GPU")


def test_fp8_refusals_are_one_line(demo: Path) -> None:
    from clipexport.precision.pipeline import QuantizeOptions, quantize_artifact
    from clipexport.trt.profiles import check_gpu_supports

    with pytest.raises(InputError, match="--target cpu does not apply to fp8"):
        quantize_artifact(QuantizeOptions(artifact=demo, precision=Precision.FP8, target=Target.CPU))
    with pytest.raises(InputError, match="--method entropy does not apply to fp8"):
        quantize_artifact(QuantizeOptions(artifact=demo, precision=Precision.FP8, method=CalibrationMethod.ENTROPY))
    for gpu, cc in (("Orin", "8.7"), ("NVIDIA A100-SXM4-80GB", "8.0"), ("Tesla T4", "7.5")):
        with pytest.raises(ClipExportError, match=f"fp8 engines need compute capability 8.9\\+.*{cc}"):
            check_gpu_supports(Precision.FP8, gpu, cc)
    for cc in ("8.9", "9.0", "10.0", "11.0"):  # L4 / L40S, H100 / H200, B200, Thor
        check_gpu_supports(Precision.FP8, "gpu", cc)
    check_gpu_supports(Precision.INT8, "Orin", "8.7")


def test_fp8_recipes_plan_strongly_typed_builds(demo: Path) -> None:
    from clipexport.trt.pipeline import BuildOptions, plan_artifact

    for name in ("vit-b-32-h100-fp8", "vit-l-14-h100-fp8", "vit-l-14-l4-fp8"):
        recipe, builds = plan_artifact(BuildOptions(artifact=demo, recipe=name))
        assert recipe.precision is Precision.FP8 and all(b.strongly_typed and b.calibration_sha256 for b in builds)
    dry = CliRunner().invoke(main, ["build", str(demo), "--recipe", "vit-l-14-l4-fp8", "--dry-run"])
    assert dry.exit_code == 0 and "--stronglyTyped" in dry.output and "vision.fp8.onnx" in dry.output
