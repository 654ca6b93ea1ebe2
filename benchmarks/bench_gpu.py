"""Training speed on a GPU (or the CPU): the project's steps against a plain timm step, and loader supply.

    python benchmarks/bench_gpu.py                    # GPU: efficientnet_b2 b16 512 px, resnest50d b128 192 px
    python benchmarks/bench_gpu.py --tiny             # CPU: test_efficientnet / test_resnet at small sizes
    python benchmarks/bench_gpu.py --profile          # + torch.profiler's top operators of each step
    python benchmarks/bench_gpu.py --compile          # the steps with torch.compile (after its warm-up)
    python benchmarks/bench_gpu.py --loader-images 32 --workers 0 4 8 --skip-steps

Printed, side by side, for one backbone, batch size and crop size:

- samples/s of the project's CAM step (``cam_consistency_loss``: two views per sample, so backbone
  images/s = 2 x samples/s) and cell step (``cell_crop_loss``), with AMP, Adam and channels-last as
  the training loop runs them;
- the same for a plain timm classification step (BCE on the pooled logits) with the same backbone,
  input channels, optimiser and backbone batch (2 x the CAM batch), and the ratio of the two;
- the peak GPU memory of each step;
- where a GPU job's first seconds go: importing the package, CUDA's initialisation, building the model;
- the Zarr training loaders' supply in samples/s for each number of workers, from 2048 px synthetic
  fields resized to 768 px (512 px crops) and 1536 px (1024 px crops), and whether the loader keeps up
  with the CAM step (supply >= 1.5 x what the step consumes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from bench_preprocess import dataset, truth_masks_store
from torch.utils.data import DataLoader

from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.stores import ShardedArray
from hpa_pipeline.nets.devices import amp_dtype, autocast_context
from hpa_pipeline.nets.models import compile_model, create_model, normalize_images
from hpa_pipeline.nets.pooling import present_cells
from hpa_pipeline.preprocess.masks import resize_masks_shard
from hpa_pipeline.preprocess.resize import resize_shard
from hpa_pipeline.train.datasets import CamTrainingSet, EpochSampler, collate_cam
from hpa_pipeline.train.steps import cam_consistency_loss, cell_crop_loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cell_masks(batch: int, size: int, cells: int, seed: int) -> torch.Tensor:
    """(B, S, S) label masks of about ``cells`` touching cells (a Voronoi tiling with background)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((batch, size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for row in range(batch):
        centres = rng.uniform(0, size, (cells, 2))
        distance = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
        nearest = distance.argmin(-1)
        inside = distance.min(-1) < (size / np.sqrt(cells) * 0.6) ** 2
        masks[row] = np.where(inside, nearest + 1, 0)
    return torch.from_numpy(masks)


class StepTimer:
    """Times ``steps`` optimisation steps after ``warmup`` ones; the step is a closure returning a loss."""

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps

    def run(self, step) -> tuple[float, float]:
        """Seconds per step and peak GPU memory in GiB (NaN on the CPU)."""
        for _ in range(self.warmup):
            step()
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        for _ in range(self.steps):
            step()
        synchronize(self.device)
        seconds = (time.perf_counter() - started) / self.steps
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else float("nan")
        return seconds, peak


def make_step(model, optimizer, device, compute_loss, scaler):
    def step():
        with autocast_context(device):
            loss = compute_loss()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    return step


def prepare(model: torch.nn.Module, device: torch.device, channels_last: bool, compile_: bool):
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, (compile_model(model) if compile_ else model)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    if channels_last:
        return x.to(device, memory_format=torch.channels_last)
    return x.to(device)


def cam_inputs(args, device: torch.device, channels_last: bool, seed: int = 0):
    """A CAM batch as the loader delivers it: normalised images, masks, host-side cells, targets."""
    images = normalize_images(torch.randint(0, 256, (args.batch, 4, args.crop, args.crop)))
    masks = cell_masks(args.batch, args.crop, args.cells, seed=seed)
    targets = (torch.rand(args.batch, 19) < 0.2).float()
    return to_device(images, device, channels_last), masks.to(device), present_cells(masks.numpy()), targets.to(device)


def time_cam_step(args, device, timer, channels_last, scaler) -> tuple[float, float]:
    model, step_model = prepare(create_model("image", args.backbone), device, channels_last, args.compile)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, masks, cells, targets = cam_inputs(args, device, channels_last)
    generator = torch.Generator().manual_seed(0)

    def loss():
        return cam_consistency_loss(step_model, images, masks, targets, None, generator, cells=cells).total

    return timer.run(make_step(model, optimizer, device, loss, scaler))


def time_plain_step(backbone, in_chans, batch, size, args, device, timer, channels_last, scaler):
    """A plain timm classification step: BCE on the pooled logits, same optimiser and AMP."""
    model, step_model = prepare(timm.create_model(backbone, in_chans=in_chans, num_classes=19), device,
                                channels_last, args.compile)  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    inputs = to_device(torch.randn(batch, in_chans, size, size), device, channels_last)
    targets = (torch.rand(batch, 19) < 0.2).float().to(device)

    def loss():
        return F.binary_cross_entropy_with_logits(step_model(inputs).float(), targets)

    return timer.run(make_step(model, optimizer, device, loss, scaler))


def time_cell_step(args, device, timer, channels_last, scaler) -> tuple[float, float]:
    model, step_model = prepare(create_model("cell", args.cell_backbone), device, channels_last, args.compile)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    crops = torch.randint(0, 256, (args.cell_batch, 8, args.cell_crop, args.cell_crop)).float()
    crops = to_device(crops, device, channels_last)
    targets = torch.rand(args.cell_batch, 19).to(device)
    generator = torch.Generator().manual_seed(0)

    def loss():
        return cell_crop_loss(step_model, crops, targets, generator).total

    return timer.run(make_step(model, optimizer, device, loss, scaler))


def bench_steps(args, device: torch.device, timer: StepTimer) -> float:
    """Print the step table; returns the CAM step's samples/s (what its loader must supply)."""
    channels_last = args.channels_last and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp_dtype(device) == torch.float16 else None
    common = (args, device, timer, channels_last, scaler)
    torch.manual_seed(0)
    cam = time_cam_step(*common)
    plain_cam = time_plain_step(args.backbone, 4, 2 * args.batch, args.crop, *common)
    cell = time_cell_step(*common)
    plain_cell = time_plain_step(args.cell_backbone, 8, args.cell_batch, args.cell_crop, *common)
    rows = [
        ("CAM step (project)", args.backbone, args.batch, 2 * args.batch, args.crop, *cam),
        ("plain timm step", args.backbone, 2 * args.batch, 2 * args.batch, args.crop, *plain_cam),
        ("cell step (project)", args.cell_backbone, args.cell_batch, args.cell_batch, args.cell_crop, *cell),
        ("plain timm step", args.cell_backbone, args.cell_batch, args.cell_batch, args.cell_crop, *plain_cell),
    ]
    print(f"\ntraining steps on {device} (AMP {amp_dtype(device)}, channels-last {channels_last}, "
          f"compile {args.compile}; {timer.steps} timed steps after {timer.warmup})")  # fmt: skip
    print(f"  {'step':22s} {'backbone':22s} {'batch':>5s} {'bb_batch':>8s} {'size':>5s} {'samples/s':>10s} "
          f"{'bb_img/s':>9s} {'peak_GiB':>8s}")  # fmt: skip
    for what, backbone, batch, backbone_batch, size, seconds, peak in rows:
        print(f"  {what:22s} {backbone:22s} {batch:5d} {backbone_batch:8d} {size:5d} {batch / seconds:10.1f} "
              f"{backbone_batch / seconds:9.1f} {peak:8.2f}")  # fmt: skip
    # the CAM step and the plain step push the same 2 x batch images through the backbone per step
    print(f"  CAM step / plain step, backbone images/s: {plain_cam[0] / cam[0]:.2f} (target >= 0.8)")
    print(f"  cell step / plain step, samples/s:        {plain_cell[0] / cell[0]:.2f} (target >= 0.9)")
    return args.batch / cam[0]


def profile_steps(args, device: torch.device) -> None:
    """torch.profiler's top operators of a few CAM steps (the heavier of the two)."""
    from torch.profiler import ProfilerActivity, profile

    channels_last = args.channels_last and device.type == "cuda"
    model, step_model = prepare(create_model("image", args.backbone), device, channels_last, False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, masks, cells, targets = cam_inputs(args, device, channels_last, seed=1)
    generator = torch.Generator().manual_seed(0)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype(device) == torch.float16 else None

    def loss():
        return cam_consistency_loss(step_model, images, masks, targets, None, generator, cells=cells).total

    step = make_step(model, optimizer, device, loss, scaler)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(3):
            step()
        synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\ntorch.profiler, 3 CAM steps, top operators by {sort_by}:")
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=15, max_name_column_width=40))


def bench_startup(device: torch.device, backbone: str) -> None:
    """Where a GPU job's first seconds go, each part measured in a fresh process."""
    probes = {
        "python + import torch": "import torch",
        "import the training stage (timm included)": "import hpa_pipeline.train.loop",
        "CUDA initialisation": "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()",
        f"build {backbone} on the device": (
            "import torch; from hpa_pipeline.nets.models import create_model; "
            f"m = create_model('image', {backbone!r}).to({str(device)!r}); "
            + ("torch.cuda.synchronize()" if device.type == "cuda" else "")
        ),
    }
    print("\njob start-up, each in a fresh process (s):")
    for what, code in probes.items():
        if "cuda" in code and device.type != "cuda":
            print(f"  {what:45s}    n/a (no GPU)")
            continue
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        print(f"  {what:45s} {time.perf_counter() - started:6.2f}")


def loader_supply(dataset_, workers: int, batch_size: int, batches: int) -> tuple[float, float]:
    """Samples/s of the CAM loader as training builds it, and the seconds to its first batch."""
    sampler = EpochSampler(len(dataset_), seed=0)
    started = time.perf_counter()
    loader = DataLoader(
        dataset_, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_cam,
        drop_last=True, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - started
    count, epoch = 0, 0
    started = time.perf_counter()
    while count < batches * batch_size:
        try:
            batch = next(iterator)
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            iterator = iter(loader)
            continue
        count += len(batch["image"])
    return count / (time.perf_counter() - started), first


def bench_loaders(args, consumption: float | None) -> None:
    data, ids = dataset(args.workdir, args.loader_images, 2048, 25)
    work = args.workdir / "gpu-loader"
    if not (work / "cells.zarr").exists():
        resize_shard(data / "train", ids, [768, 1536], [work / "i768.zarr", work / "i1536.zarr"], threads=2)
        truth_masks_store(data, ids, work / "truth.zarr")
        resize_masks_shard(work / "truth.zarr", [768, 1536], [work / "m768.zarr", work / "m1536.zarr"],
                           work / "cells.zarr", "train")  # fmt: skip
    cells = read_cell_table(work / "cells.zarr")
    labels = np.zeros((len(ids), 19), np.float32)
    print(f"\nZarr CAM loader supply ({len(ids)} fields of 2048 px, batch {args.batch}; the CAM step consumes "
          + (f"{consumption:.1f} samples/s at {args.crop} px)" if consumption else "n/a)"))  # fmt: skip
    print(f"  {'image':>5s} {'crop':>5s} {'workers':>7s} {'samples/s':>10s} {'first batch s':>13s}  keeps up")
    for size, crop in ((768, 512), (1536, 1024)):
        train_set = CamTrainingSet(ShardedArray([work / f"i{size}.zarr"], "images", "images"),
                                   ShardedArray([work / f"m{size}.zarr"], "masks_resized", "masks"),
                                   np.arange(len(ids)), labels, cells, None, crop, True, 0)  # fmt: skip
        for workers in args.workers:
            supply, first = loader_supply(train_set, workers, args.batch, args.loader_batches)
            verdict = "n/a"
            if consumption and crop == args.crop:
                verdict = f"{'yes' if supply >= 1.5 * consumption else 'no'} ({supply / consumption:.1f}x)"
            print(f"  {size:5d} {crop:5d} {workers:7d} {supply:10.1f} {first:13.2f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny test backbones at small sizes (for the CPU)")
    parser.add_argument("--backbone", default=None, help="CAM backbone (default efficientnet_b2)")
    parser.add_argument("--batch", type=int, default=None, help="CAM batch (default 16)")
    parser.add_argument("--crop", type=int, default=None, help="CAM crop size (default 512)")
    parser.add_argument("--cells", type=int, default=20, help="cells per crop")
    parser.add_argument("--cell-backbone", default=None, help="cell backbone (default resnest50d)")
    parser.add_argument("--cell-batch", type=int, default=None, help="cell batch (default 128)")
    parser.add_argument("--cell-crop", type=int, default=None, help="cell crop size (default 192)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators")
    parser.add_argument("--skip-steps", action="store_true", help="only the start-up and loader figures")
    parser.add_argument("--loader-images", type=int, default=16)
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    tiny = {"backbone": "test_efficientnet", "batch": 8, "crop": 128, "cell_backbone": "test_resnet",
            "cell_batch": 32, "cell_crop": 64}  # fmt: skip
    full = {"backbone": "efficientnet_b2", "batch": 16, "crop": 512, "cell_backbone": "resnest50d",
            "cell_batch": 128, "cell_crop": 192}  # fmt: skip
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    consumption = None
    if not args.skip_steps:
        consumption = bench_steps(args, device, StepTimer(device, args.warmup, args.steps))
        if args.profile:
            profile_steps(args, device)
    bench_startup(device, args.backbone)
    bench_loaders(args, consumption)


if __name__ == "__main__":
    main()
