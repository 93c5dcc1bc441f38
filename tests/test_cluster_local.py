"""``--ray`` alone (address "local") starts a Ray runtime of its own, even while another cluster runs here.

Ray's ``ray.init(address=None)`` joins a cluster already running on the machine (``ray start``, or a
test's cluster), whose workers are not the search's: every evaluation then failed as WorkerDied.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = '''
import json, logging
from ray.cluster_utils import Cluster
import einc
from einc.runtime.cluster import RayEvaluator

def objective(arch, ctx):
    import ray
    return {"score": 1.0, "gcs": ray.get_runtime_context().gcs_address}

if __name__ == "__main__":
    other = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False))
    try:
        with RayEvaluator(2, address="local") as ev:
            r = einc.search(objective, input_shape=(3, 8, 8), strategy="rs", budget=2, workers=2, evaluator=ev,
                            max_params=100_000)
        print(json.dumps({"other": other.address, "reasons": [t.reason for t in r.trials],
                          "gcs": sorted({t.metrics.get("gcs") for t in r.trials if t.ok})}))
    finally:
        other.shutdown()
'''


@pytest.mark.slow
def test_local_ray_does_not_join_another_cluster_running_here(tmp_path):
    pytest.importorskip("ray")
    script = tmp_path / "two_clusters.py"
    script.write_text(SCRIPT)
    p = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=180,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["reasons"] == [None, None]
    assert len(out["gcs"]) == 1 and out["gcs"][0] != out["other"]
