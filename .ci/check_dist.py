"""The package a user installs: build the sdist, build a wheel from that sdist, check what both
carry, install the wheel into a fresh venv and use it from outside the repo.

    python .ci/check_dist.py [OUT_DIR]      (default build/dist; run by `make dist-check`)

The wheel is built CPU-only (VIDCORE_BUILD_CUDA=0) to keep CI cheap; the CUDA half is covered by
checking that the sdist carries every csrc/ file (the .cu sources and headers included), and by
`make test`, which compiles the CUDA half in place. The fresh venv borrows this interpreter's
site-packages (torch, triton, rich) through a .pth file instead of downloading them again.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = """
import os, sys, torch, vidcore
from vidcore import _backends, reference
from vidcore.ops import make_mask, pack
here = os.path.realpath(vidcore.__file__)
assert here.startswith(os.path.realpath(sys.prefix)), f"imported {here}, not the wheel"
assert _backends.EXTENSION is not None, _backends.EXTENSION_MISSING
x = torch.randn(2, 3, 4, 4, 8)
mask = make_mask(3, (4, 4), 0.5, batch_size=2, seed=1)
assert torch.equal(pack(x, mask), reference.pack(x.view(-1, 8), mask.keep_idx))
for line in str(vidcore.info()).splitlines()[:3]:
    print(line)
"""


def run(*cmd: str | Path, log: Path | None = None, **kwargs) -> None:
    """Run cmd; with `log`, its output goes there and only its tail is shown if it fails."""
    print("+", " ".join(map(str, cmd)), flush=True)
    if log is None:
        subprocess.run(list(map(str, cmd)), check=True, **kwargs)
        return
    with open(log, "w") as f:
        done = subprocess.run(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode:
        print("".join(log.read_text().splitlines(keepends=True)[-60:]), file=sys.stderr)
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, cmd))}; log: {log}")


def tracked(*folders: str) -> set[str]:
    """Files git tracks under `folders` (the source of truth in a clone), else all files there."""
    try:
        out = subprocess.run(["git", "ls-files", "--", *folders], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        return set(out.split())
    except (OSError, subprocess.CalledProcessError):
        return {str(p.relative_to(ROOT)) for f in folders for p in (ROOT / f).rglob("*") if p.is_file()}


def check_sdist(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(f"{top}/") for n in tar.getnames()}
    needed = tracked("csrc", "kernels", "vidcore") | {"LICENSE", "CHANGELOG.md", "setup.py",
                                                      "pyproject.toml", "MANIFEST.in"}
    needed |= {f for f in tracked("bench") if not f.startswith("bench/results/")}
    missing = sorted(needed - names)
    assert not missing, f"the sdist lacks {missing}: add them to MANIFEST.in"
    assert "vidcore/_build_info.py" not in names, "the sdist ships a generated _build_info.py"
    print(f"sdist: {len(names)} entries, every tracked csrc/ kernels/ vidcore/ bench/ file")


def check_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f for f in tracked("vidcore", "kernels", "bench") if f.endswith(".py")}
    expected = {f if f.startswith("vidcore/") else f"vidcore/{f}" for f in sources}
    expected |= {"vidcore/py.typed", "vidcore/_build_info.py"}
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing} (setup.py's package list?)"
    assert any(n.startswith("vidcore/_C.") and n.endswith(".so") for n in names), "no vidcore._C"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert any(" rich" in r for r in requires) and not any("numpy" in r for r in requires), requires
    print(f"wheel: {len(names)} files, every module; runtime requires {requires}")


def install_and_use(wheel: Path, out: Path) -> None:
    venv = out / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    borrowed = [p for p in sys.path if p.endswith("site-packages") and p != site]
    Path(site, "_borrowed_site_packages.pth").write_text("\n".join(borrowed) + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "--force-reinstall", "-q", wheel)
    away = out / "elsewhere"  # not the repo, so `import vidcore` cannot find the source tree
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run(python, "-c", SMOKE, cwd=away, env=env)
    run(venv / "bin" / "vidcore", "info", "--json", cwd=away, env=env, stdout=subprocess.DEVNULL)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "build" / "dist").resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "VIDCORE_BUILD_CUDA": "0"}
    # without --sdist/--wheel, `build` makes the sdist and then the wheel from the unpacked sdist
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, env=env,
        log=out / "build.log")
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    check_sdist(sdist)
    check_wheel(wheel)
    install_and_use(wheel, out)
    print(f"dist check passed ({sysconfig.get_platform()}): {sdist.name}, {wheel.name}")


if __name__ == "__main__":
    main()
