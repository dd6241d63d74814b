"""Helpers for the fast single-model training path (CUDA), each with a clean fallback.

* :func:`prepare_model` -- channels_last memory format for convolutional models on CUDA (the
  layout tensor cores want under bf16 autocast); a no-op elsewhere.
* :func:`maybe_compile` -- ``torch.compile`` in place (``nn.Module.compile``: parameter names,
  state_dict keys and masks are unchanged), only where it can work; if it is unavailable, or
  the first compiled call fails, the model runs eagerly and one warning says why.
* :func:`fused_sgd_available` / :func:`sgd_optimizer` -- the fused SGD kernel where this torch
  has it for the device, else the foreach implementation (what training uses today).

None of these changes what is computed, only how it is rounded: fused and foreach SGD agree to
the last bit but not bitwise (on CPU the fused kernel rounds the elements past the last full
vector differently; tests/test_bench.py), and channels_last and compiled kernels sum in other
orders. Runs with and without them therefore agree to float32 rounding, not bitwise, so they
are opt-in at the call site, and a lineage should not switch them on or off midway where
bitwise resumption matters.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from .config import TrainConfig

__all__ = [
    "compile_unavailable_reason",
    "eager",
    "fused_sgd_available",
    "has_conv",
    "maybe_compile",
    "prepare_model",
    "sgd_optimizer",
]


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules())


def prepare_model(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Move `model` to `device`; on CUDA, convolutional models go channels_last (in place; returned).

    Inputs need no conversion: a convolution with channels_last weights runs channels_last and
    converts an NCHW input itself. State dicts stay loadable both ways (the cache stores
    contiguous copies).
    """
    device = torch.device(device)
    model.to(device)
    if device.type == "cuda" and has_conv(model):
        model.to(memory_format=torch.channels_last)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def compile_unavailable_reason(device: str | torch.device) -> str | None:
    """Why torch.compile cannot be used for training on `device` here, or None if it can."""
    device = torch.device(device)
    if not hasattr(torch, "compile") or not hasattr(nn.Module, "compile"):
        return f"torch {torch.__version__} has no nn.Module.compile (needs torch >= 2.2)"
    try:
        import torch._dynamo as dynamo

        supported = getattr(dynamo, "is_dynamo_supported", lambda: True)()
    except Exception as exc:  # a broken install must not stop training
        return f"torch._dynamo cannot be imported ({_first_line(exc)})"
    if not supported:
        return "torch.compile does not support this Python version"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        try:
            from torch.utils._triton import has_triton
        except Exception:  # older layouts: try the import itself
            def has_triton() -> bool:
                try:
                    import triton  # noqa: F401
                except ImportError:
                    return False
                return True
        if not has_triton():
            return "triton is not installed (inductor needs it for CUDA kernels)"
        if torch.cuda.get_device_capability(device) < (7, 0):
            return "the GPU is older than compute capability 7.0, which triton does not support"
        return None
    if device.type == "cpu":
        compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            return "no C++ compiler on PATH (inductor needs one for CPU kernels)"
        return None
    return f"torch.compile is not set up for device type {device.type!r} here"


def maybe_compile(model: nn.Module, enabled: bool = True, *, device: str | torch.device | None = None,
                  mode: str | None = None, warn=warnings.warn) -> nn.Module:
    """Compile `model` in place when `enabled` and possible; return it (compiled or eager).

    Falls back to eager execution, with one warning naming the reason, when compile is
    unavailable (old torch, no triton, no C++ compiler, unsupported Python) or when the first
    compiled call raises. The first call after a successful compile is slow (seconds to a
    minute); later calls with the same shapes are not. `mode` is passed to torch.compile
    (e.g. "max-autotune-no-cudagraphs"). Note: errors raised while compiling the *backward*
    surface in ``loss.backward()`` of the first step, not here.
    """
    if not enabled:
        return model
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    reason = compile_unavailable_reason(device)
    if reason is not None:
        warn(f"torch.compile not used: {reason}; training runs eagerly", RuntimeWarning, stacklevel=2)
        return model
    try:
        model.compile(**({"mode": mode} if mode else {}))
    except Exception as exc:
        warn(f"torch.compile not used: {_first_line(exc)}; training runs eagerly", RuntimeWarning, stacklevel=2)
        return model
    compiled_call = getattr(model, "_compiled_call_impl", None)
    if compiled_call is None:  # a torch whose Module.compile works differently: leave it alone
        return model
    succeeded = False

    def guarded(*args, **kwargs):
        nonlocal succeeded
        if succeeded:
            return compiled_call(*args, **kwargs)
        try:
            out = compiled_call(*args, **kwargs)
        except Exception as exc:
            warn(f"torch.compile failed on the first call ({_first_line(exc)}); running eagerly",
                 RuntimeWarning, stacklevel=2)
            model._compiled_call_impl = None
            return model(*args, **kwargs)
        succeeded = True
        return out

    model._compiled_call_impl = guarded
    return model


def eager(model: nn.Module) -> nn.Module:
    """Undo maybe_compile/nn.Module.compile on `model` and its submodules (in place; returned).

    Useful before handing a trained model to torch.func transforms (Hessian-vector products),
    which do not compose with a compiled call everywhere.
    """
    for m in model.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return model


@functools.cache
def _fused_sgd_available(device: str) -> bool:
    try:
        p = torch.zeros(4, device=device, requires_grad=True)
        p.grad = torch.ones(4, device=device)
        opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
        opt.step()
        opt.step()
        return bool(torch.isfinite(p).all())
    except Exception:  # TypeError (no `fused` argument) or RuntimeError (device not supported)
        return False


def fused_sgd_available(device: str | torch.device) -> bool:
    """Whether torch.optim.SGD(fused=True) works for float32 parameters on `device` (cached)."""
    return _fused_sgd_available(str(torch.device(device)))


def sgd_optimizer(params: Iterable[torch.Tensor], cfg: TrainConfig, device: str | torch.device,
                  fused: bool | None = None) -> torch.optim.SGD:
    """training's SGD (lr, momentum, Nesterov, weight decay from `cfg`), fused where available.

    `fused`: None picks fused when available, else foreach; True requires it (falls back to
    foreach with a warning); False forces foreach.
    """
    use_fused = fused_sgd_available(device) if fused is None else fused
    if use_fused and not fused_sgd_available(device):
        warnings.warn(f"fused SGD is not available on {device} with torch {torch.__version__}; using foreach",
                      RuntimeWarning, stacklevel=2)
        use_fused = False
    kwargs = {"fused": True} if use_fused else {"foreach": True}
    return torch.optim.SGD(list(params), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, **kwargs)
