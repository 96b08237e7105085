import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ft_models import device, ram
from ft_models.device import (
    MLX_MISSING,
    TORCH_MISSING,
    DeviceError,
    GpuMemory,
    MemoryInfo,
    memory_info,
    normalize_dtype,
    pick_backend,
    pick_device,
    pick_dtype,
    supports_dtype,
)


def _machine(monkeypatch: pytest.MonkeyPatch, *, apple: bool, mlx: bool, torch: bool) -> None:
    monkeypatch.setattr(device, "is_apple_silicon", lambda: apple)
    monkeypatch.setattr(device, "_mlx_importable", lambda: mlx)
    monkeypatch.setattr(device, "_torch_installed", lambda: torch)


# -- backend ----------------------------------------------------------------------------------


def test_auto_picks_mlx_on_apple_silicon(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, apple=True, mlx=True, torch=True)

    choice = pick_backend("auto")

    assert choice.backend == "mlx"
    assert choice.reason == "auto: Apple Silicon, and mlx is installed"


def test_auto_picks_torch_on_apple_silicon_without_mlx(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, apple=True, mlx=False, torch=True)

    choice = pick_backend()

    assert choice.backend == "torch"
    assert 'pip install "ft-models[mlx]"' in choice.reason


def test_auto_picks_torch_elsewhere_even_with_mlx(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, apple=False, mlx=True, torch=True)

    choice = pick_backend()

    assert choice.backend == "torch"
    assert choice.reason.startswith("auto: not Apple Silicon")


def test_auto_falls_back_to_mlx_on_the_cpu_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, apple=False, mlx=True, torch=False)

    assert pick_backend().backend == "mlx"


def test_a_missing_backend_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, apple=False, mlx=False, torch=False)

    with pytest.raises(ImportError) as torch_error:
        pick_backend("torch")
    with pytest.raises(ImportError) as mlx_error:
        pick_backend("mlx")
    with pytest.raises(ImportError, match="no training backend is installed"):
        pick_backend("auto")

    assert str(torch_error.value) == 'PyTorch is not installed: pip install "ft-models[torch]"'
    assert str(mlx_error.value) == 'MLX is not installed: pip install "ft-models[mlx]"'


def test_an_unknown_backend_is_an_error() -> None:
    with pytest.raises(
        DeviceError, match=r"training\.backend is 'jax': choose one of auto, torch, mlx"
    ):
        pick_backend("jax")


def test_the_real_backends_of_this_machine() -> None:
    # The dev environment has both; on Linux auto is torch, and mlx (CPU) can be asked for.
    assert pick_backend("torch").backend == "torch"
    mlx = pick_backend("mlx")
    assert mlx.backend == "mlx"
    if sys.platform.startswith("linux"):
        assert pick_backend().backend == "torch"
        assert "CPU" in mlx.reason


# -- device -----------------------------------------------------------------------------------


def test_auto_device_on_a_machine_without_gpu_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    choice = pick_device("auto")

    assert choice.device == "cpu"
    assert choice.reason.startswith("auto: no CUDA or MPS (")


def test_asking_for_cuda_without_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    with pytest.raises(DeviceError) as error:
        pick_device("cuda")

    message = str(error.value)
    assert message.startswith(
        "resources.device is 'cuda' but torch.cuda.is_available() is False here: "
    )
    assert message.endswith("Set resources.device to auto or cpu.")


def test_asking_for_mps_without_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    with pytest.raises(DeviceError, match=r"^resources.device is 'mps' but torch.backends.mps"):
        pick_device("mps")


def test_cuda_is_preferred_and_indexed_devices_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"Fake GPU {index}")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)

    auto = pick_device()
    second = pick_device("cuda:1")

    assert auto.device == "cuda"
    assert auto.reason == "auto: CUDA is available: Fake GPU 0 (1 of 2; DDP uses the others)"
    assert second.device == "cuda:1"
    assert second.reason == "resources.device is 'cuda:1': Fake GPU 1"
    with pytest.raises(DeviceError, match="has 2 CUDA device"):
        pick_device("cuda:2")


def test_mps_comes_before_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)

    assert pick_device().device == "mps"


def test_cpu_and_unknown_devices() -> None:
    assert pick_device("cpu") == device.DeviceChoice("cpu", "resources.device is 'cpu'")
    with pytest.raises(DeviceError, match="choose auto, cpu, cuda, cuda:N or mps"):
        pick_device("tpu")


# -- dtype ------------------------------------------------------------------------------------


def test_dtype_names() -> None:
    assert normalize_dtype("bf16") == "bfloat16"
    assert normalize_dtype("FP32") == "float32"
    assert normalize_dtype("half") == "float16"
    with pytest.raises(DeviceError, match="unknown dtype 'int4'"):
        normalize_dtype("int4")


def test_bfloat16_computes_on_this_cpu() -> None:
    import torch

    assert supports_dtype("cpu", "bfloat16")
    x = torch.ones(8, 8, dtype=torch.bfloat16, requires_grad=True)
    (x @ x).sum().backward()
    assert x.grad is not None
    assert x.grad.dtype == torch.bfloat16
    assert float(x.grad[0, 0]) == 16.0


def test_auto_dtype_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert pick_dtype("cpu").dtype == "float32"
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert pick_dtype("cpu").dtype == "bfloat16"
    assert pick_dtype("mlx").dtype == "bfloat16"
    assert pick_dtype("cpu", "fp16") == device.DtypeChoice("float16", "float16 was asked for")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert pick_dtype("cuda").dtype == "float32"
    with pytest.raises(DeviceError, match=r"compute capability 8\.0"):
        pick_dtype("cuda", "bfloat16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert pick_dtype("cuda").dtype == "bfloat16"


# -- memory -----------------------------------------------------------------------------------


def test_memory_info_of_this_machine() -> None:
    info = memory_info()

    assert 0 < info.available_bytes <= info.total_bytes
    assert info.total_bytes > 2**30
    assert info.for_device("cpu") == info.available_bytes
    assert info.ram_source
    if sys.platform.startswith("linux"):
        assert not info.unified
        assert info.metal_working_set_bytes is None


def test_meminfo_and_cgroup_are_read(tmp_path: Path) -> None:
    # Moved with the readers to ft_models.ram (test_ram.py covers cgroup v1, nesting and page
    # cache); the assertions stay: MemAvailable alone, then capped by a cgroup v2 limit.
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(
        "MemTotal:       16384 kB\nMemFree:  1024 kB\nMemAvailable:    8192 kB\n"
    )
    (proc / "self" / "cgroup").write_text("0::/\n")
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("6291456\n")
    (cgroup / "memory.current").write_text("2097152\n")

    limited = ram.ram(proc=proc, cgroup_root=cgroup)
    assert (limited.total_bytes, limited.available_bytes) == (6291456, 4194304)
    (cgroup / "memory.max").write_text("max\n")
    unlimited = ram.ram(proc=proc, cgroup_root=cgroup)
    assert (unlimited.total_bytes, unlimited.available_bytes) == (16384 * 1024, 8192 * 1024)
    assert unlimited.cgroup_limit_bytes is None


def test_memory_for_a_device() -> None:
    gpu = GpuMemory(index=1, name="Fake", total_bytes=80 * 2**30, free_bytes=79 * 2**30)
    info = MemoryInfo(total_bytes=64 * 2**30, available_bytes=32 * 2**30, gpus=(gpu,))
    mac = MemoryInfo(16 * 2**30, 12 * 2**30, unified=True, metal_working_set_bytes=11 * 2**30)

    assert info.for_device("cuda:1") == 80 * 2**30
    assert info.for_device("cpu") == 32 * 2**30
    assert mac.for_device("mlx") == 11 * 2**30
    assert mac.for_device("mps") == 11 * 2**30
    with pytest.raises(DeviceError, match="no CUDA device 0"):
        info.for_device("cuda")


def test_importable_without_torch_or_mlx() -> None:
    # torch and mlx made unimportable, as in a base install of ft-models.
    code = textwrap.dedent(
        """
        import json, sys
        for name in ("torch", "mlx", "mlx.core", "mlx_lm", "transformers"):
            sys.modules[name] = None
        import ft_models.convert, ft_models.device, ft_models.load, ft_models.memory
        from ft_models.device import pick_backend, memory_info
        result = {"info": memory_info().total_bytes > 0}
        for backend in ("torch", "mlx", "auto"):
            try:
                pick_backend(backend)
            except ImportError as error:
                result[backend] = str(error)
        print(json.dumps(result))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["info"] is True
    assert result["torch"] == TORCH_MISSING
    assert result["mlx"] == MLX_MISSING
    assert result["auto"].startswith("no training backend is installed")


def test_importing_the_modules_imports_no_backend() -> None:
    code = (
        "import sys, ft_models.convert, ft_models.device, ft_models.load, ft_models.memory, "
        "ft_models.peak_memory, ft_models.ram, ft_models.memory_watchdog; "
        "print(sorted(m for m in ('torch', 'transformers', 'mlx', 'mlx_lm', 'peft', 'psutil') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )

    assert done.stdout.strip() == "[]"
