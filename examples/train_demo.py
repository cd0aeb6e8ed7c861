"""Train the `sparsedm demo` model: a small U-ViT on scikit-learn's 8x8 digits, made 2:4 sparse
with SR-STE and distilled to a few DDIM steps, then converted to a sparsedm file.

    python examples/train_demo.py --out demo_out            # the full run (target: < 20 min, 2 CPU cores)
    python examples/train_demo.py --out /tmp/q --quick      # a smoke run of every stage (about a minute)

Stages (docs/TRAINING.md):
1. dense pre-training: v-prediction, cosine logSNR schedule, continuous t, the network sees t * 999
   (U-ViT's convention), loss = MSE on v (the "SNR+1" weighting), EMA of the weights;
2. SR-STE 2:4 fine-tuning of SparseDM's layers (attn.qkv, attn.proj, mlp.fc1, mlp.fc2), the
   layers turning sparse one by one over the first half, then finalize();
3. progressive distillation of the sparse model from --teacher-steps to --student-steps DDIM
   steps, students kept 2:4 with SR-STE;
4. conversion (`--from zeroed`) with the sampler settings, and grids of the dense teacher and the
   sparse distilled student.

Writes to --out: dense.pth, sparse.pth, student.pth (state_dicts), demo.json (architecture +
sampler), demo.safetensors (converted), provenance.json (script, seed, settings, losses, timings),
teacher_grid.png, student_grid.png, train_log.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from sparsedm.train import (UVIT_SPARSEDM_LAYERS, SparsitySchedule, alpha_sigma, ddim_sample, finalize, logsnr_cosine,
                            progressive_distill, sparsify_for_training)

TIME_INPUT = ("continuous", 999.0)  # U-ViT's network sees t * 999

CONFIG = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=6, num_heads=4, mlp_ratio=4, qkv_bias=False,
              qk_scale=None, mlp_time_embed=False, num_classes=-1, use_checkpoint=False, conv=False, skip=True)


def load_digits_tensor() -> torch.Tensor:
    """The 1797 8x8 digits shipped inside scikit-learn (no download), scaled to [-1, 1]: [N, 1, 8, 8]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit("this example needs scikit-learn for its 8x8 digits: pip install scikit-learn") from e
    images = load_digits().images.astype(np.float32) / 16.0  # values 0..16
    return torch.from_numpy(images * 2.0 - 1.0).unsqueeze(1)


def build_model(device: str = "cpu") -> torch.nn.Module:
    from sparsedm.models import build

    return build("uvit", CONFIG, device=device)


class Logger:
    def __init__(self, path: str):
        self.file = open(path, "a")
        self.started = time.perf_counter()

    def __call__(self, row: dict) -> None:
        row = {"s": round(time.perf_counter() - self.started, 1), **row}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        print(json.dumps(row), flush=True)


def v_loss(model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Diffusion loss: MSE on v = alpha eps - sigma x at t ~ U(0, 1) (= SNR+1-weighted x loss)."""
    b = x0.shape[0]
    t = torch.rand(b, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator)
    a, s = (v.float().view(b, 1, 1, 1) for v in alpha_sigma(logsnr_cosine(t)))
    z = a * x0 + s * noise
    v = a * noise - s * x0
    return (model(z, (t * TIME_INPUT[1]).float()) - v).pow(2).mean()


def train(model, data, iters, batch, lr, generator, log, stage, handle=None, ema=None, ema_decay=0.999):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 200))
    model.train()
    losses = []
    for it in range(iters):
        idx = torch.randint(0, data.shape[0], (batch,), generator=generator)
        loss = v_loss(model, data[idx], generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if handle is not None:
            handle.step()
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(p, 1 - ema_decay)
        losses.append(float(loss.detach()))
        if it % 200 == 0 or it == iters - 1:
            row = {"stage": stage, "iter": it, "loss": sum(losses[-200:]) / len(losses[-200:])}
            if handle is not None:
                row["sparse_fraction"] = handle.sparse_fraction
            log(row)
    return sum(losses[-200:]) / max(1, len(losses[-200:]))


def grid_png(path: str, images: torch.Tensor, scale: int = 4) -> None:
    from sparsedm.sampling.images import make_grid, to_uint8, write_png

    u8 = to_uint8(images).numpy()
    u8 = u8.repeat(scale, axis=1).repeat(scale, axis=2)
    write_png(path, make_grid(u8, nrow=8))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings: check every stage runs")
    p.add_argument("--pretrain-iters", type=int, default=3000)
    p.add_argument("--sparse-iters", type=int, default=1000)
    p.add_argument("--distill-iters", type=int, default=400, help="per round")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--teacher-steps", type=int, default=32)
    p.add_argument("--student-steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = p.parse_args(argv)
    if args.quick:
        args.pretrain_iters, args.sparse_iters, args.distill_iters, args.teacher_steps = 40, 20, 10, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    log = Logger(os.path.join(args.out, "train_log.jsonl"))
    timings, losses = {}, {}
    data = load_digits_tensor()

    # 1. dense pre-training (the EMA copy is the teacher)
    started = time.perf_counter()
    model = build_model()
    ema = copy.deepcopy(model).requires_grad_(False)
    losses["dense"] = train(model, data, args.pretrain_iters, args.batch, 1e-3, generator, log, "dense", ema=ema)
    dense = ema.eval()
    torch.save(dense.state_dict(), os.path.join(args.out, "dense.pth"))
    timings["dense_s"] = time.perf_counter() - started

    # 2. SR-STE 2:4 fine-tuning of SparseDM's layers
    started = time.perf_counter()
    sparse = copy.deepcopy(dense).requires_grad_(True)
    handle = sparsify_for_training(sparse, SparsitySchedule(0, args.sparse_iters // 2, by="layers"),
                                   include=list(UVIT_SPARSEDM_LAYERS))
    losses["sparse"] = train(sparse, data, args.sparse_iters, args.batch, 3e-4, generator, log, "srste",
                             handle=handle)
    finalize(sparse.eval())
    torch.save(sparse.state_dict(), os.path.join(args.out, "sparse.pth"))
    timings["sparse_s"] = time.perf_counter() - started

    # 3. progressive distillation, students kept 2:4
    started = time.perf_counter()
    result = progressive_distill(
        copy.deepcopy(sparse), data, start_steps=args.teacher_steps, end_steps=args.student_steps,
        iters_per_round=args.distill_iters, batch_size=args.batch, lr=1e-4, time_input=TIME_INPUT,
        prediction="v", weighting="truncated_snr", clip_x0=(-1.0, 1.0), sample_clip_x0=(-1.0, 1.0),
        sparse={"include": list(UVIT_SPARSEDM_LAYERS)}, seed=args.seed, log=lambda r: log({"stage": "distill", **r}),
        log_every=200)
    student = result.student
    torch.save(student.state_dict(), os.path.join(args.out, "student.pth"))
    timings["distill_s"] = time.perf_counter() - started
    losses["distill_rounds"] = [h["final_loss"] for h in result.history]

    # 4. grids, conversion, provenance
    z = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed + 1))
    teacher_images = ddim_sample(dense, z, args.teacher_steps, time_input=TIME_INPUT, clip_x0=(-1, 1))
    student_images = ddim_sample(student, z, args.student_steps, time_input=TIME_INPUT, clip_x0=(-1, 1))
    grid_png(os.path.join(args.out, "teacher_grid.png"), teacher_images)
    grid_png(os.path.join(args.out, "student_grid.png"), student_images)
    provenance = {
        "script": "examples/train_demo.py", "seed": args.seed, "quick": args.quick,
        "data": "sklearn.datasets.load_digits (1797 8x8 images, scaled to [-1, 1])",
        "iters": {"dense": args.pretrain_iters, "srste": args.sparse_iters, "distill_per_round": args.distill_iters},
        "batch": args.batch, "teacher_steps": args.teacher_steps, "student_steps": args.student_steps,
        "sparse_layers": list(UVIT_SPARSEDM_LAYERS), "final_losses": losses,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    sampler = dict(result.sampler)
    sampler["_provenance"] = provenance
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump({"arch": "uvit", "config": CONFIG, "resolution": 8, "in_channels": 1, "sampler": sampler}, f,
                  indent=1)
    with open(os.path.join(args.out, "provenance.json"), "w") as f:
        json.dump(provenance, f, indent=1)
    from sparsedm.convert import convert, load

    out_file = os.path.join(args.out, "demo.safetensors")
    convert(os.path.join(args.out, "student.pth"), out_file, source_format="zeroed",
            config_path=os.path.join(args.out, "demo.json"), log=print)
    loaded = load(out_file)
    with torch.no_grad():
        check = ddim_sample(loaded.model, z[:8], args.student_steps, time_input=TIME_INPUT, clip_x0=(-1, 1))
    diff = float((check - student_images[:8]).abs().max())
    log({"stage": "done", "file": out_file, "bytes": os.path.getsize(out_file), "runtime_vs_trained_max_diff": diff,
         **{k: round(v, 1) for k, v in timings.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
