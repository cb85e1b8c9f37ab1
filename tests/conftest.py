import json

import pytest
import torch

torch.set_num_threads(1)  # tiny test models run fastest single-threaded

TINY_UNET = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1], "num_heads": 2,
             "groups": 4, "dropout": 0.0}
TINY_MLP = {"hidden": 32, "depth": 2}


@pytest.fixture
def tiny_config(tmp_path):
    """Write a small TrainConfig JSON and return its path (network overrides chosen per data kind)."""

    def make(kind: str = "mlp", **fields) -> str:
        cfg = {"network": TINY_UNET if kind == "unet" else TINY_MLP, "batch_size": 16, "log_every": 5,
               "checkpoint_every": 10, "sample_steps": 3, "warmup_steps": 5, "schedule": {"kind": "linear", "T": 100}}
        cfg.update(fields)
        path = tmp_path / f"cfg_{kind}.json"
        path.write_text(json.dumps(cfg))
        return str(path)

    return make
