"""Which torch device a command or study runs on, and how many CPU threads torch uses there."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator

import torch

_CUDA = re.compile(r"^cuda(:\d+)?$")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``) → ``cuda`` when a GPU is visible, else ``cpu``; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Under a launcher (``accelerate launch``, ``torchrun``: ``WORLD_SIZE`` > 1 and ``LOCAL_RANK`` set) ``"auto"``
    and ``"cuda"`` mean this process's own GPU, ``cuda:LOCAL_RANK`` (modulo the GPUs visible), so that N
    processes on one machine use N GPUs; ``"cuda:N"`` stays the device named.

    Raises:
        ValueError: an unknown name, or a CUDA device this machine does not have (names what it has).
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and _launched_local_rank() is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{_launched_local_rank() % torch.cuda.device_count()}")
    if device == "cpu":
        return torch.device("cpu")
    if isinstance(device, str) and _CUDA.match(device):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise ValueError(f"device {device!r} is not available: this machine has {count} CUDA device(s); "
                             "allowed: auto, cpu" + (f", cuda, cuda:0 … cuda:{count - 1}" if count else ""))
        return torch.device(device)
    raise ValueError(f"device {device!r}; allowed: auto, cpu, cuda, cuda:N")


def check_device_name(device: str | torch.device, what: str = "device") -> None:
    """Check that ``device`` names a device :func:`resolve_device` knows — ``"auto"``, ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or a ``torch.device`` of type cpu / cuda — without asking whether this machine has it.

    Raises:
        ValueError: naming ``what`` and the allowed names.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not (device in ("auto", "cpu") or (isinstance(device, str) and _CUDA.match(device))):
        raise ValueError(f"{what} = {device!r}: allowed auto, cpu, cuda, cuda:N or a torch.device of type cpu or cuda")


def _launched_local_rank() -> int | None:
    """This process's ``LOCAL_RANK`` when a launcher started several processes, else ``None``."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
            return int(os.environ["LOCAL_RANK"])
    except ValueError:
        return None
    return None


def batches_ahead(batches, device: str | torch.device, *, depth: int | None = None):
    """Iterate ``batches`` (tuples of CPU tensors) while a background thread prepares the next ``depth`` ones,
    so that the device is not idle while the CPU builds a batch (SAF painting, AugMix, the c_id augmentations).

    ``depth=None``: 2 batches ahead on CUDA — there pinned (page-locked) and copied with ``non_blocking=True`` —
    and none on the CPU, where the preparing thread would compete with training for the same cores. The
    batches are made by the one producer thread in their order, so their content (and every random draw in
    them) is the same as without it. An exception in the producer is raised here.

    Yields:
        the batches, each tensor on ``device``.
    """
    import queue
    import threading

    device = torch.device(device)
    cuda = device.type == "cuda"
    depth = (2 if cuda else 0) if depth is None else int(depth)
    if depth < 0:
        raise ValueError(f"depth = {depth}: allowed an integer ≥ 0 (0: no batch prepared ahead)")

    def move(batch):
        if cuda:
            return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
        return tuple(t.to(device) for t in batch)

    if depth == 0:
        for batch in batches:
            yield move(batch)
        return
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        """Hand ``item`` over unless the consumer has stopped; False once it has."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(tuple(t.pin_memory() for t in batch) if cuda else batch):
                    return
            put(done)
        except BaseException as error:  # handed to the consumer, raised there
            put(error)

    worker = threading.Thread(target=produce, name="safcore-batches-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield tuple(t.to(device, non_blocking=cuda) for t in item)
    finally:
        stop.set()
        worker.join(timeout=5)


def bf16_supported(device: str | torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively: the CPU (autocast works everywhere; AVX512-BF16 / AMX make
    it fast), a CUDA GPU with compute capability ≥ 8.0 (Ampere: A100, H100, H200 …; not emulated); no other."""
    return _bf16_supported(str(torch.device(device)))


@functools.lru_cache(maxsize=None)
def _bf16_supported(device: str) -> bool:
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return False


_WARNED_BF16: set[str] = set()


def bf16_autocast(device: str | torch.device, enabled: bool = True):
    """``torch.autocast(device.type, dtype=torch.bfloat16)`` where the device supports bf16
    (:func:`bf16_supported`) and ``enabled``; elsewhere full precision, with one warning per device type
    (e.g. a V100 runs a bf16 profile in fp32 instead of failing or emulating bf16)."""
    import contextlib
    import warnings

    device = torch.device(device)
    if not enabled:
        return contextlib.nullcontext()
    if not bf16_supported(device):
        if device.type not in _WARNED_BF16:
            _WARNED_BF16.add(device.type)
            warnings.warn(f"{device} has no native bfloat16: running in float32 where the settings ask for bf16 "
                          "autocast", RuntimeWarning, stacklevel=2)
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def training_attention_kernel(device: str | torch.device, bf16: bool) -> str:
    """The scaled-dot-product attention kernel a training step runs on ``device``: ``"math"`` (PyTorch's
    reference composition ``softmax(Q Kᵀ / √d) V`` of matmuls) under bf16 autocast on a CPU, where the fused flash
    kernel's backward takes about a third of a cpu-profile U-Net step and the math kernel is ~1.4× faster per step
    (``benchmarks/bench_training.py``); ``"default"`` (PyTorch's own dispatch: flash / memory-efficient on a GPU)
    everywhere else, fp32 CPU included, where the two measured the same."""
    device = torch.device(device)
    return "math" if device.type == "cpu" and bf16 and bf16_supported(device) else "default"


def training_attention(device: str | torch.device, bf16: bool):
    """A context running attention with :func:`training_attention_kernel`'s kernel (the same function, another
    kernel: results agree to bf16 rounding, not bit for bit). The kernel is chosen at the forward pass; its
    backward follows the recorded graph, so only the forward needs the context."""
    if training_attention_kernel(device, bf16) == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Use ``n`` torch intra-op threads inside the block (0 = unchanged), restoring the old count."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


CompileMode = str  # torch.compile's modes: "default", "reduce-overhead", "max-autotune"


@contextlib.contextmanager
def faster_network(module: torch.nn.Module, *, channels_last: bool = False, compile: bool = False,
                   compile_mode: CompileMode = "default") -> Iterator[torch.nn.Module]:
    """Inside the block ``module`` (e.g. ``safcore.generators.loader.network(model)``, a U-Net) runs with its
    weights in ``channels_last`` memory format (its 4-D input converted too: NHWC convolutions, the tensor
    cores' layout) and/or its ``forward`` wrapped by ``torch.compile(mode=compile_mode)``; on exit its memory
    format and ``forward`` are restored. Neither changes what is computed: the outputs equal the plain ones up
    to float rounding (``tests/test_batching.py``: within 1e-5 on the CPU), and no random draw moves.

    Both are OFF by default, on every device: neither has been measured to pay on a GPU in this project
    (``benchmarks/bench_gpu_path.py`` measures them side by side; turn one on where its ratio shows it pays).
    On the CPU channels_last rarely helps a small U-Net, and ``torch.compile`` costs tens of seconds of
    compilation per input shape (the probe's varying batch sizes recompile; ``dynamic`` shapes are left to
    torch's default).

    Raises:
        ValueError: ``compile_mode`` not one of torch.compile's modes.
    """
    if compile_mode not in ("default", "reduce-overhead", "max-autotune"):
        raise ValueError(f"compile_mode = {compile_mode!r}; allowed: 'default', 'reduce-overhead', 'max-autotune'")
    if not (channels_last or compile):
        yield module
        return
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"channels_last / compile need a torch.nn.Module; got {type(module).__name__}")
    own = module.__dict__.get("forward")  # an instance-level forward (already wrapped) to restore
    plain = module.forward
    forward = plain
    if channels_last:
        module.to(memory_format=torch.channels_last)

        def forward(x, *args, **kwargs):  # noqa: F811 — the NHWC input for the NHWC weights
            if isinstance(x, torch.Tensor) and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return plain(x, *args, **kwargs)
    if compile:
        forward = torch.compile(forward, mode=compile_mode)
    module.forward = forward
    try:
        yield module
    finally:
        if own is not None:
            module.forward = own
        else:
            del module.forward
        if channels_last:
            module.to(memory_format=torch.contiguous_format)
