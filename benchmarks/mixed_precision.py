"""Training speed and accuracy with and without mixed precision (``TrainConfig.precision``).

Alternates fp32 and bf16 epochs in one process (so a busy machine slows both alike) and
prints seconds per epoch and the final test accuracy of each; on CUDA also fp16::

    PERMERGE_DATA=../shared/data python benchmarks/mixed_precision.py --model mlp --dataset mnist@1000
    PERMERGE_DATA=../shared/data python benchmarks/mixed_precision.py --model resnet20:x1 \\
        --dataset 'cifar10[0-4]@200' --device cuda

The speed-up depends on the hardware: on a CPU with AVX512-BF16 or AMX, bf16 matrix products
are native (this machine, an AMD EPYC with avx512_bf16: MLP 3x512 epochs 1.9x faster, same
accuracy); without them autocast only adds conversions and can be slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from permerge.api import test_spec
from permerge.data import load_dataset
from permerge.models import build_model, model_config_for
from permerge.train import TrainConfig, evaluate, train_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--dataset", default="mnist@1000")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per precision (alternated)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    data = load_dataset(args.dataset, "train")
    test = load_dataset(test_spec(args.dataset), "test")
    precisions = ["fp32", "bf16"] + (["fp16"] if dev.type == "cuda" else [])
    models, times = {}, {p: [] for p in precisions}
    for p in precisions:
        torch.manual_seed(0)
        models[p] = build_model(model_config_for(args.model, data.image_shape))
    for epoch in range(args.epochs):
        for p in precisions:
            cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05, precision=p, val_fraction=0)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_model(models[p], data, cfg, seed=epoch, device=dev, progress=False)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[p].append(time.perf_counter() - t0)
    print(f"{args.model} on {args.dataset} ({len(data)} images), {dev}, {args.threads} thread(s)", end=", ")
    print(f"torch {torch.__version__}")
    for p in precisions:
        acc = evaluate(models[p], test, device=dev)["acc"]
        print(f"  {p}: {statistics.median(times[p]):.2f} s/epoch (median of {args.epochs}), test acc {acc:.2f}%")


if __name__ == "__main__":
    main()
