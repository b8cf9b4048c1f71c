"""Run under mpirun by tests/test_distributed.py: one rank of ``pyllm.train`` with the
TrainConfig fields given as JSON in argv[1]; each rank then writes its final weights to
``<out>/rank<r>.npy``. ``fail_at`` (rank, call) makes that rank raise inside its n-th gradient
computation, as bad data or a bug on one machine would."""
import json
import os
import sys

import numpy as np

sys.path.insert(0, sys.argv[2])          # the pyllm under test
import pyllm  # noqa: E402
from pyllm.train import TrainConfig, train  # noqa: E402

spec = json.loads(sys.argv[1])
fail_at = spec.pop("fail_at", None)
resume = spec.pop("resume", False)
rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
if fail_at is not None and rank == fail_at[0]:
    calls = [0]
    real = pyllm.GPT.loss_and_grads

    def failing(self, *a, **k):
        calls[0] += 1
        if calls[0] == fail_at[1]:
            raise RuntimeError("injected failure on rank %d" % rank)
        return real(self, *a, **k)
    pyllm.GPT.loss_and_grads = failing
res = train(TrainConfig(**spec), resume=resume, progress=False)
np.save(os.path.join(spec["out"], "rank%d.npy" % res["rank"]), res["model"].params)
print("threads=%d ranks=%d" % (pyllm.get_num_threads(), res["ranks"]))
