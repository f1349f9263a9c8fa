"""Session-scoped artifacts built from tiny random models saved to local checkpoints/folders:
each export runs once per session and many tests read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIGS = Path(__file__).parent / "configs"


def save_open_clip_checkpoint(config_name: str, folder: Path, seed: int = 7) -> Path:
    """Random-init a model from a tests/configs JSON and save its state dict, like a fine-tune would."""
    import open_clip
    import torch

    config = json.loads((CONFIGS / f"{config_name}.json").read_text())
    torch.manual_seed(seed)
    kwargs = {"quick_gelu": True} if config.pop("quick_gelu", False) else {}
    model = (
        open_clip.CLIP(**config, **kwargs)
        if "timm_model_name" not in config["vision_cfg"]
        else open_clip.CLIP(**config)
    )
    path = folder / f"{config_name}.pt"
    torch.save(model.state_dict(), path)
    return path


def export_dir(
    tmp_path_factory: pytest.TempPathFactory, name: str, model: str, pretrained: str | None, **kwargs
) -> Path:
    from clipexport.export.pipeline import ExportOptions, export_model

    out = tmp_path_factory.mktemp(name) / "artifact"
    export_model(ExportOptions(model=model, output=out, pretrained=pretrained, **kwargs))
    return out


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = save_open_clip_checkpoint("tiny-vit", tmp_path_factory.mktemp("ckpt-vit"))
    return export_dir(tmp_path_factory, "tiny-vit", str(CONFIGS / "tiny-vit.json"), str(ckpt))


@pytest.fixture(scope="session")
def hf_clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import save_tiny_hf_clip

    return save_tiny_hf_clip(tmp_path_factory.mktemp("hf-clip") / "tiny-hf-clip")


@pytest.fixture(scope="session")
def demo_quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo CLIP with every precision this CPU makes: fp16, int8 (--target cpu) and fp8
    (shared by the search and the new-target tests; none of them changes its graphs)."""
    from clipexport.artifact.precision import QUANTIZED, Target
    from clipexport.precision.pipeline import QuantizeOptions, quantize_artifact

    artifact = export_dir(tmp_path_factory, "demo-quantized", "demo", None)
    for precision in QUANTIZED:  # every precision the registry holds: a new one is tested without editing this
        target = Target.CPU if Target.CPU in precision.facts.targets else None  # the placement this CPU runs fast
        quantize_artifact(QuantizeOptions(artifact=artifact, precision=precision, target=target))
    return artifact


@pytest.fixture(scope="session")
def vit_b32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full-size ViT-B-32 with seeded random weights: the README's full-size example."""
    return export_dir(tmp_path_factory, "vit-b-32", "ViT-B-32", "random")


@pytest.fixture(scope="session")
def hf_siglip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import save_tiny_hf_siglip

    return save_tiny_hf_siglip(tmp_path_factory.mktemp("hf-siglip") / "tiny-hf-siglip")


# ---- optional extras: a test that needs one this machine lacks skips, naming it ------------------


def _missing_extra(error: BaseException) -> str | None:
    from clipexport._deps import OPTIONAL_EXTRAS, extra_of
    from clipexport.errors import MissingDependencyError

    if isinstance(error, MissingDependencyError):
        extra = getattr(error, "extra", None)
    elif isinstance(error, ImportError) and getattr(error, "name", None):
        extra = extra_of(error.name)
    else:
        return None
    return extra if extra in OPTIONAL_EXTRAS else None


def _skip_for_missing_extra(outcome) -> None:
    error = outcome.excinfo[1] if outcome.excinfo else None
    extra = _missing_extra(error) if error is not None else None
    if extra is not None:
        outcome.force_exception(
            pytest.skip.Exception(
                f"needs the optional '{extra}' extra, not installed here (pip install 'clipexport[{extra}]'): "
                f"{str(error).splitlines()[0][:200]}",
                _use_item_location=True,
            )
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    outcome = yield
    _skip_for_missing_extra(outcome)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    _skip_for_missing_extra(outcome)


@pytest.fixture(scope="session")
def serve_python() -> Path:
    """The serving venv (.venv-serve: nvidia-pytriton with numpy<2 on a Python whose shared
    libpython is its own), built here on first use exactly as .ci/run builds it, then reused;
    skips only where this machine has no such Python."""
    from serve_env import ensure_serve_python

    python, reason = ensure_serve_python()
    if python is None:
        pytest.skip(reason)
    return python
