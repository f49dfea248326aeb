"""What the package declares and ships. The full check (sdist -> wheel -> fresh venv) is
`make dist-check` (.ci/check_dist.py), which CI runs; these are the cheap invariants."""
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_dependencies_are_declared_and_numpy_is_not_one():
    runtime = [r for r in requires("vidcore") if "extra ==" not in r]
    names = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in runtime}
    assert {"torch", "rich"} <= names and "numpy" not in names, runtime


def test_vidcore_runs_and_lists_its_benchmarks_without_numpy():
    # numpy is blocked: importing it raises, as on a machine without it
    code = ("import sys; sys.modules['numpy'] = None\n"
            "import torch, vidcore\n"
            "from vidcore.bench.runner import available_ops\n"
            "assert vidcore.ops.unit_keys(0, 0, 8).shape == (8,)\n"
            "assert 'pool' in available_ops() and str(vidcore.info())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_license_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert all(f"\n   {n}. " in text for n in range(1, 10)) and "END OF TERMS AND CONDITIONS" in text


def test_changelog_has_an_unreleased_section_and_the_package_is_typed():
    assert "\n## Unreleased\n" in (ROOT / "CHANGELOG.md").read_text()
    assert (ROOT / "vidcore" / "py.typed").exists()
