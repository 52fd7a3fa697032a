"""Run under mpirun: train with Horovod and write this rank's shard and weight digest as JSON."""

import json
import sys
from pathlib import Path

from lhccnn.config import smoke
from lhccnn.train import train

data, out = Path(sys.argv[1]), Path(sys.argv[2])
result = train(
    smoke().replace(epochs=2, n_train=1024, verbose=0),
    data=data,
    out_dir=out / "run",
    use_horovod=True,
    n_test=256,
)
keep = ("rank", "size", "shard", "weights_digest", "target_lr", "samples_per_s")
(out / f"rank{result['rank']}.json").write_text(json.dumps({k: result[k] for k in keep}))
