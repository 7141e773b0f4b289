"""CPU stand-in for `sgl_kernel`, whose CUDA build cannot load without libcuda.

memento_sglang's CPU launcher puts this directory first on `PYTHONPATH` only when no
GPU is present. SGLang imports some kernel names at module load even on paths a
dense model on CPU never calls; those imports get a placeholder that raises if it is
ever called, so a missing kernel fails loudly instead of silently.
"""

__version__ = "0.0.0+memento-cpu-stand-in"


class _MissingKernel:
    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{self.__name__} was called, but this process runs "
            "memento-sglang's CPU stand-in for the CUDA-only sgl_kernel package"
        )


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _MissingKernel(name)
