"""Optional dependencies: each belongs to one extra of the package, and a missing one is named with the
``pip install`` line that brings it, before any work starts (not after an hour of encoding)."""
import importlib
import importlib.util
from types import ModuleType

__all__ = ['EXTRAS', 'require', 'check_installed', 'install_hint']

# import name -> the extra that installs it (pyproject.toml's [project.optional-dependencies])
EXTRAS = {
    'onnx': 'export', 'onnxruntime': 'export', 'onnxscript': 'export',
    'faiss': 'retrieval', 'matplotlib': 'retrieval',
    'scipy': 'convert',
    'pycocotools': 'coco',
    'jinja2': 'cards',
    'gradio': 'demo', 'gradio_client': 'demo',
    'numba': 'fast',
}


def install_hint(module: str) -> str:
    """The one line that names a missing module and how to install it."""
    top = module.split('.')[0]
    return f"{top} is not installed; install it with pip install 'deephash-zoo[{EXTRAS.get(top, 'all')}]'"


def require(module: str) -> ModuleType:
    """Import an optional dependency, or raise ImportError with the pip line that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(install_hint(module)) from e


def check_installed(*modules: str) -> None:
    """Raise ImportError naming the first missing module without importing any (cheap, at a command's start)."""
    for module in modules:
        if importlib.util.find_spec(module.split('.')[0]) is None:
            raise ImportError(install_hint(module))
