"""Tests for benchmarks/profile_bench.py: reading the compiled HLO and charging ops to parts."""
import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile_bench as pb

HLO = """HloModule jit_f

%fused_computation (p0: f32[2,4], p1: f32[4,3]) -> f32[2,3] {
  %p0 = f32[2,4]{1,0} parameter(0)
  %p1 = f32[4,3]{1,0} parameter(1)
  ROOT %dot.1 = f32[2,3]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/jvp(DiT)/block_0/mlp/fc1/dot_general"}
}

ENTRY %main (a: f32[2,4], b: f32[4,3]) -> f32[2,3] {
  %a = f32[2,4]{1,0} parameter(0)
  %b = f32[4,3]{1,0} parameter(1)
  %ynn_fusion = f32[2,3]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation
  ROOT %add.2 = f32[2,3]{1,0} add(%ynn_fusion, %ynn_fusion), metadata={op_name="jit(step)/add"}
}
"""


def test_hlo_ops_finds_fused_matmuls_and_their_name_stacks():
  ops = pb.hlo_ops(HLO)
  fusion = ops["ynn_fusion"]
  # The fusion has no name stack of its own: it takes its dot's, and counts as a matmul.
  assert fusion.matmul and fusion.opcode == "fusion"
  assert fusion.op_name.endswith("block_0/mlp/fc1/dot_general")
  assert not ops["add.2"].matmul
  assert pb.classify(fusion) == ("MLP", "forward")
  assert pb.classify(ops["add.2"]) == ("optimiser update and loss", "update")


@pytest.mark.parametrize("op_name,part,phase", [
    ("jit(s)/transpose(jvp(DiT))/block_3/adaLN_modulation/...i,io->...o/dot_general",
     "adaLN modulation", "backward"),
    ("jit(s)/jvp(DiT)/block_0/attn/ni,io->no/dot_general", "attention projections",
     "forward"),
    ("jit(s)/jvp(DiT)/block_0/cross_attn/bhqk,bkhd->bqhd/dot_general", "attention core",
     "forward"),
    ("jit(s)/jvp(DiT)/block_0/add", "norms, modulation, residuals", "forward"),
    ("jit(s)/jvp(DiT)/final/out_proj/dot_general", "embeddings, in/out projections",
     "forward"),
    ("jit(s)/jit(_normal)/jit(_uniform)/while/body/add", "random numbers", "update"),
    ("jit(<lambda>)/DiT/block_1/mlp/fc2/dot_general", "MLP", "forward"),
    ("", "unattributed", "unknown"),
])
def test_classify_by_name_stack(op_name, part, phase):
  assert pb.classify(pb.HloOp("fusion", op_name, matmul=True)) == (part, phase)


def test_interval_union():
  assert pb._interval_union([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4.0


def test_breakdown_charges_a_traced_call():
  """A real trace of a jitted function: its ops are found, and the matmul is charged."""
  x = jnp.ones((64, 64))
  f = jax.jit(lambda a: jnp.tanh(a @ a))
  compiled = f.lower(x).compile()
  b = pb.breakdown(lambda: compiled(x), compiled, calls=2, wall_s=1.0)
  assert b["ops_ms"] > 0 and b["matmul_ms"] > 0
  assert b["busy_ms"] <= b["ops_ms"] + 1e-9
  assert {r["part"] for r in b["rows"]} <= set(pb.PARTS)


@pytest.mark.slow
def test_profile_cli_quick(tmp_path):
  """``launch/bench.py profile --quick`` runs end to end and names every part it charged."""
  import json
  import subprocess
  import sys
  out = tmp_path / "p.json"
  proc = subprocess.run([sys.executable, "launch/bench.py", "profile", "--quick", "--json",
                         str(out)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "train step, batch 4" in proc.stdout and "denoising call, batch 1" in proc.stdout
  assert "dependent (6 x 32) x (32 x 32) float32 products over distinct kernels" in proc.stdout
  result = json.loads(out.read_text())
  assert result["row_products"]["count"] == 8 and result["row_products"]["gflops_per_s"] > 0
  for which in ("train", "denoise"):
    parts = {r["part"] for r in result[which]["rows"]}
    assert parts <= set(pb.PARTS) and "MLP" in parts
  assert any(r["phase"] == "backward" for r in result["train"]["rows"])
  assert all(r["phase"] != "backward" for r in result["denoise"]["rows"])


def test_row_products_rate_in_both_dtypes():
  from benchmarks import harness
  for dtype in ("float32", "bfloat16"):
    r = harness.row_products_rate(4, 16, 3, dtype, repeats=1)
    assert (r["rows"], r["width"], r["count"], r["dtype"]) == (4, 16, 3, dtype)
    assert r["gflops_per_s"] == pytest.approx(3 * 2 * 4 * 16 * 16 / r["seconds"] / 1e9)
