"""vidcore imports and runs without vidcore._C or Triton, says why in info(), and refuses to
hide a _C that exists but fails to load. Each case runs in a fresh interpreter."""
import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_imports_and_runs_without_extension_and_triton():
    result = run_python("""
        import sys
        sys.modules["vidcore._C"] = None   # as if never built
        sys.modules["triton"] = None       # as if not installed
        import torch, vidcore
        rows = {(r["op"], r["device"]): r for r in vidcore.info()["backends"]}
        cpu = rows[("unit_keys", "cpu")]
        assert cpu["kernel"] == "reference" and "not built" in cpu["reason"], cpu
        cuda = rows[("merge_attention_states", "cuda")]
        assert cuda["kernel"] == "reference" and "Triton is not installed" in cuda["reason"], cuda
        keys = vidcore.ops.unit_keys(5, [0, 1], 33)
        assert torch.equal(keys, vidcore.ops.unit_keys(5, [0, 1], 33, backend="torch"))
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_extension_that_fails_to_load_raises():
    result = run_python("""
        import importlib.abc, sys

        class BrokenExtension(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "vidcore._C":
                    raise ImportError("undefined symbol: _ZN3c10 (simulated ABI mismatch)")

        sys.meta_path.insert(0, BrokenExtension())
        import vidcore
    """)
    assert result.returncode != 0
    assert "undefined symbol" in result.stderr
