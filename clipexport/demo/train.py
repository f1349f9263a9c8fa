"""Train the demo CLIP on CPU: open_clip's model and contrastive loss on procedurally drawn
shapes (clipexport.demo.shapes), deterministic by seed.

    .venv/bin/python -m clipexport.demo.train [--steps 1600] [--seed 0] [--out clipexport/data/demo]

Writes into --out: demo-clip.safetensors (fp16 weights), tokenizer/ (tokenizer.json),
training.json (loss and held-out zero-shot accuracy along the way, timings, sha256, versions).
The same seed, step count, thread count and library versions give the same sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from clipexport.demo.shapes import CLASSES, ZERO_SHOT_TEMPLATES, caption, pairs, random_scene, render
from clipexport.demo.tokenizer import build_tokenizer
from clipexport.parity import stats

CONFIG = Path(__file__).resolve().parent.parent / "data" / "demo" / "demo-clip.json"
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)  # open_clip's defaults: the eval transform
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def pixels(images) -> torch.Tensor:
    array = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    x = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255
    return (x - MEAN) / STD


def build_model(tokenizer_dir: Path):
    import open_clip
    from open_clip import factory

    config = json.loads(CONFIG.read_text())
    config["text_cfg"]["hf_tokenizer_name"] = str(tokenizer_dir)
    factory._MODEL_CONFIGS["demo-clip"] = config
    return open_clip.create_model("demo-clip"), open_clip.get_tokenizer("demo-clip")


def zero_shot_accuracy(model, tokenizer, images: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Top-1/top-5 with CLIP's prompt ensembling: the same statistics verify --labeled-images reports."""
    with torch.no_grad():
        texts = model.encode_text(tokenizer([tpl.format(name) for name in CLASSES for tpl in ZERO_SHOT_TEMPLATES]))
        feats = torch.cat([model.encode_image(images[i : i + 256]) for i in range(0, len(images), 256)])
    result = stats.zero_shot_accuracy(
        feats.numpy(), stats.class_embeddings(texts.numpy(), len(ZERO_SHOT_TEMPLATES)), labels
    )
    return result.top1, result.top5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--pool", type=int, default=24000, help="distinct training images (captions are redrawn every epoch)"
    )
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--out", type=Path, default=CONFIG.parent)
    args = parser.parse_args()
    import open_clip

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    started = time.time()
    tokenizer_dir = build_tokenizer(args.out / "tokenizer")
    model, tokenizer = build_model(tokenizer_dir)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    rng = np.random.default_rng(args.seed)
    scenes = [random_scene(rng) for _ in range(args.pool)]
    images = pixels([render(s) for s in scenes])
    print(f"drew {len(scenes)} training images in {time.time() - started:.0f} s", flush=True)
    held_images, _, held_labels = pairs(960, seed=10_000 + args.seed)
    held = pixels(held_images)
    held_y = np.array([CLASSES.index(label) for label in held_labels])
    loss_fn = open_clip.loss.ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / args.steps)))
    )
    curve = []
    order = rng.permutation(args.pool)
    cursor = 0
    train_start = time.time()
    for step in range(1, args.steps + 1):
        if cursor + args.batch > args.pool:
            order, cursor = rng.permutation(args.pool), 0
        index = order[cursor : cursor + args.batch]
        cursor += args.batch
        texts = tokenizer([caption(scenes[i], rng) for i in index])
        model.train()
        image_features, text_features, logit_scale = model(images[index], texts)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        point = {"step": step, "loss": round(float(loss.detach()), 4), "seconds": round(time.time() - train_start, 1)}
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            point["top1"], point["top5"] = zero_shot_accuracy(model, tokenizer, held, held_y)
        if "top1" in point or step % 50 == 0:
            print(point, flush=True)
        curve.append(point)
    model.eval()
    from safetensors.torch import save_file

    weights = args.out / "demo-clip.safetensors"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    # The shipped fp16 weights, reloaded: the accuracy users get.
    model.load_state_dict({k: v.float() for k, v in state.items()})
    top1, top5 = zero_shot_accuracy(model, tokenizer, held, held_y)
    record = {
        "steps": args.steps,
        "batch": args.batch,
        "pool": args.pool,
        "lr": args.lr,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "train_seconds": round(time.time() - train_start, 1),
        "total_seconds": round(time.time() - started, 1),
        "heldout": {"images": len(held_y), "classes": len(CLASSES), "top1": top1, "top5": top5},
        "templates": list(ZERO_SHOT_TEMPLATES),
        "sha256": digest,
        "bytes": weights.stat().st_size,
        "versions": {
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "curve": curve,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"held-out zero-shot top-1 {top1:.3f} top-5 {top5:.3f}; {weights} sha256 {digest}", flush=True)


if __name__ == "__main__":
    main()
