"""vidcore::PairwiseSum (csrc/include/vidcore/token_pack.h), the order of unpack_fill_grad's CUDA
kernels, compiled with g++ and run on the host: both of its forms (levels in a per-thread array,
levels behind an operator[] as the combine kernel's shared-memory column) give the bits of the
pairwise tree written out here independently (repeatedly add even and odd leaves)."""
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")

_PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "vidcore/token_pack.h"

template <typename Acc>
struct Column {  // like the combine kernel's shared-memory column: levels strided in memory
  Acc* base;
  Acc& operator[](int k) const { return base[k * 3]; }
};

template <typename Acc>
int run() {
  long n;
  if (std::scanf("%ld", &n) != 1) return 1;
  std::vector<Acc> leaves(n);
  for (auto& v : leaves) {
    unsigned long long bits;
    std::scanf("%llx", &bits);
    if constexpr (sizeof(Acc) == 4) { unsigned u = unsigned(bits); std::memcpy(&v, &u, 4); }
    else std::memcpy(&v, &bits, 8);
  }
  vidcore::PairwiseSum<Acc, 11> in_registers;
  std::vector<Acc> storage(31 * 3);
  vidcore::PairwiseSum<Acc, 31, Column<Acc>> in_memory{{storage.data()}};
  for (Acc v : leaves) in_registers.add(v), in_memory.add(v);
  for (Acc total : {in_registers.total(), in_memory.total()}) {
    unsigned long long bits = 0;
    std::memcpy(&bits, &total, sizeof(Acc));
    std::printf("%llx\n", bits);
  }
  return 0;
}

int main(int argc, char** argv) { return argv[1][0] == 'f' ? run<float>() : run<double>(); }
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairwise")
    (tmp / "main.cpp").write_text("#include <cstring>\n" + _PROGRAM)
    subprocess.run(["g++", "-std=c++17", "-O2", f"-I{ROOT / 'csrc' / 'include'}",
                    str(tmp / "main.cpp"), "-o", str(tmp / "main")], check=True)
    return tmp / "main"


def _pairwise(leaves: np.ndarray):
    """The aligned pairwise tree: add even and odd leaves level by level (an odd one out passes
    up alone), in the leaves' own dtype."""
    level = list(leaves)
    if not level:
        return leaves.dtype.type(0)
    while len(level) > 1:
        level = [level[i] + level[i + 1] if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 100, 1023])
def test_pairwise_sum_matches_the_tree_bit_for_bit(program, dtype, n):
    rng = np.random.default_rng(n)
    leaves = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)).astype(dtype)
    if n >= 7:  # signed zeros, infinities and NaN pass through the same tree
        leaves[[1, 2, 5]] = [-0.0, np.inf, -0.0]
    if n >= 100:
        leaves[50] = np.nan
    width = "I" if dtype == np.float32 else "Q"
    ints = np.frombuffer(leaves.tobytes(), dtype=np.uint32 if width == "I" else np.uint64)
    stdin = f"{n}\n" + " ".join(f"{int(v):x}" for v in ints) + "\n"
    out = subprocess.run([str(program), "f" if dtype == np.float32 else "d"], input=stdin,
                         capture_output=True, text=True, check=True).stdout.split()
    want = struct.unpack("<" + width, _pairwise(leaves).tobytes())[0]
    assert [int(v, 16) for v in out] == [want, want]
