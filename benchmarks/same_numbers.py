"""Behaviour-unchanged check for refactors: pack -> train -> evaluate -> scan on a tiny layout
with the code on PYTHONPATH; prints digests (store content, weights, scores.csv,
candidates.csv, AUROC) so two versions of the code can be compared:

    git archive OLD src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python benchmarks/same_numbers.py /tmp/a /tmp/same.yaml
    PYTHONPATH=src python benchmarks/same_numbers.py /tmp/b /tmp/same.yaml

The first run writes the training YAML (cpu-small's recipe at tiny size) with every setting
explicit, so a change of the library's defaults cannot hide a change of behaviour.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

from lensfinder.config import EvaluateConfig, ScanConfig, TrainConfig, load_config, to_dict
from lensfinder.data.store import pack
from lensfinder.evaluate import evaluate
from lensfinder.scan import scan
from lensfinder.testing import TINY_INPUT, TINY_MODEL, make_tiny_layout
from lensfinder.train import train


def write_recipe(path: Path) -> None:
    """cpu-small at tiny size, every field written out."""
    recipe = to_dict(load_config(TrainConfig, "cpu-small"))
    recipe |= {"input": to_dict(TINY_INPUT), "model": to_dict(TINY_MODEL), "max_epochs": 2}
    recipe |= {"max_train_samples": 16, "batch_size": 8, "batch_size_max": 8, "num_workers": 0}
    recipe["split"] = {"seed": 4, "test_fraction": 0.3, "val_fraction": 0.3}
    recipe["adapt"]["field"] = None
    path.write_text(yaml.safe_dump(recipe))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main(root: Path, recipe: Path) -> dict:
    import zarr
    from safetensors.numpy import load_file

    root.mkdir(parents=True, exist_ok=True)
    if not recipe.exists():
        write_recipe(recipe)
    layout = make_tiny_layout(root / "layout", n=24, seed=0)
    store = pack(layout, root / "s.zarr", progress=False).out
    run = train(load_config(TrainConfig, str(recipe)), store, root / "run", progress=False).run_dir
    evaluation = evaluate([run], store, root / "eval", EvaluateConfig(bootstrap=50))
    scan([run], store, root / "scan", ScanConfig(workers=1, shard_size=8), progress=False)
    weights = load_file(str(run / "model.safetensors"))
    tensors = b"".join(weights[name].tobytes() for name in sorted(weights))
    return {
        "store": zarr.open_group(store, mode="r").attrs["content_hash"],
        "weights": hashlib.sha256(tensors).hexdigest()[:12],
        "scores_csv": digest(root / "eval" / "scores.csv"),
        "auroc": evaluation.metrics["auroc"],
        "candidates_csv": digest(root / "scan" / "candidates.csv"),
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2])), indent=1))
