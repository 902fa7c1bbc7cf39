"""ctypes binding to libmoba: finds the shared library, mirrors include/moba.h, turns statuses into exceptions.

Nothing here knows about NumPy or PyTorch; it only moves integers and pointers.
"""
import ctypes
import glob
import os

# The major.minor this binding was written against (include/moba.h MOBA_VERSION_MAJOR/MINOR).
ABI_VERSION = (0, 2)

# Enum values, as in include/moba.h.
OK, ERR_INVALID_ARGUMENT, ERR_UNSUPPORTED, ERR_OUT_OF_MEMORY = 0, 1, 2, 3
ERR_WORKSPACE_TOO_SMALL, ERR_CUDA, ERR_INTERNAL = 4, 5, 6
BACKEND_CPU, BACKEND_CUDA = 0, 1
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
OP_FORWARD, OP_BACKWARD, OP_ROUTE = 0, 1, 2


class Params(ctypes.Structure):
    """moba_params, field for field (order and C types matter: ctypes lays it out like the C compiler)."""
    _fields_ = [
        ("backend", ctypes.c_int),
        ("cuda_stream", ctypes.c_void_p),
        ("num_threads", ctypes.c_int),
        ("dtype", ctypes.c_int),
        ("num_seqs", ctypes.c_int),
        ("total_tokens", ctypes.c_int64),
        ("cu_seqlens", ctypes.POINTER(ctypes.c_int32)),
        ("num_q_heads", ctypes.c_int),
        ("num_kv_heads", ctypes.c_int),
        ("head_dim", ctypes.c_int),
        ("block_size", ctypes.c_int),
        ("top_k", ctypes.c_int),
        ("softmax_scale", ctypes.c_float),
        ("deterministic", ctypes.c_int),
        ("block_idx", ctypes.POINTER(ctypes.c_int32)),
    ]


class CacheParams(ctypes.Structure):
    """moba_cache_params, field for field (the decode calls: moba_cache_append, moba_cache_attend)."""
    _fields_ = [
        ("backend", ctypes.c_int),
        ("cuda_stream", ctypes.c_void_p),
        ("num_threads", ctypes.c_int),
        ("dtype", ctypes.c_int),
        ("num_seqs", ctypes.c_int),
        ("num_q_heads", ctypes.c_int),
        ("num_kv_heads", ctypes.c_int),
        ("head_dim", ctypes.c_int),
        ("block_size", ctypes.c_int),
        ("top_k", ctypes.c_int),
        ("softmax_scale", ctypes.c_float),
        ("full_attention", ctypes.c_int),
        ("page_size", ctypes.c_int),
        ("capacity", ctypes.c_int),
        ("max_pages_per_seq", ctypes.c_int),
        ("num_pages", ctypes.c_int64),
    ]


def candidate_paths():
    """Where to look for libmoba, in order: $MOBA_LIBRARY, the package directory, a dev checkout's build/."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = []
    env = os.environ.get("MOBA_LIBRARY")
    if env:
        paths.append(env)
    # The wheel installs libmoba.so (or only a versioned libmoba.so.X[.Y.Z]) next to this file.
    paths.append(os.path.join(here, "libmoba.so"))
    paths.extend(sorted(glob.glob(os.path.join(here, "libmoba.so.*")), key=len))
    paths.append(os.path.normpath(os.path.join(here, "..", "..", "build", "libmoba.so")))
    return paths


def _declare(lib):
    P = ctypes.POINTER(Params)
    vp, sz, st = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    fp = ctypes.POINTER(ctypes.c_float)
    CP, ip = ctypes.POINTER(CacheParams), ctypes.POINTER(ctypes.c_int32)
    signatures = {
        "moba_params_init": (None, [P]),
        "moba_workspace_size": (st, [P, ctypes.c_int, ctypes.POINTER(sz)]),
        "moba_forward": (st, [P, vp, vp, vp, vp, fp, vp, sz]),
        "moba_backward": (st, [P, vp, vp, vp, vp, vp, fp, vp, vp, vp, vp, sz]),
        "moba_route": (st, [P, vp, vp, ctypes.POINTER(ctypes.c_int32), vp, sz]),
        # block_table is a void pointer here: host memory for the CPU backend, device memory for CUDA
        "moba_cache_params_init": (None, [CP]),
        "moba_cache_append": (st, [CP, ip, ip, vp, vp, vp, vp, vp, vp]),
        "moba_cache_attend": (st, [CP, ip, ip, vp, vp, vp, vp, vp, vp, fp, vp, sz]),
        "moba_cache_workspace_size": (st, [CP, ip, ip, ctypes.POINTER(sz)]),
        "moba_strerror": (ctypes.c_char_p, [st]),
        "moba_last_error": (ctypes.c_char_p, []),
        "moba_backend_available": (ctypes.c_int, [ctypes.c_int]),
        "moba_backend_supports": (st, [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]),
        "moba_version": (ctypes.c_char_p, []),
        "moba_dtype_size": (sz, [ctypes.c_int]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def _load():
    tried = []
    for path in candidate_paths():
        if not os.path.exists(path):
            tried.append(path + " (missing)")
            continue
        try:
            lib = ctypes.CDLL(path)
            _declare(lib)
        except (OSError, AttributeError) as e:
            tried.append("%s (%s)" % (path, e))
            continue
        version = lib.moba_version().decode()
        major_minor = tuple(int(x) for x in version.split(".")[:2])
        if major_minor != ABI_VERSION:
            raise ImportError("moba: %s is libmoba %s, this binding needs %d.%d.x"
                              % (path, version, ABI_VERSION[0], ABI_VERSION[1]))
        return lib, path
    raise ImportError("moba: cannot load libmoba; tried:\n  " + "\n  ".join(tried) +
                      "\nSet MOBA_LIBRARY to the path of libmoba.so, or `pip install` the package.")


_cached = None


def lib():
    """The loaded library (loaded on first use, so `import moba` works before it is built)."""
    global _cached
    if _cached is None:
        _cached = _load()
    return _cached[0]


def library_path():
    lib()
    return _cached[1]


def new_params():
    p = Params()
    lib().moba_params_init(ctypes.byref(p))
    return p


def new_cache_params():
    p = CacheParams()
    lib().moba_cache_params_init(ctypes.byref(p))
    return p


def last_error():
    return lib().moba_last_error().decode(errors="replace")


def check(status):
    """Raises for a non-OK status: ValueError for invalid arguments, NotImplementedError (a RuntimeError)
    for valid settings the backend does not support, MemoryError, and RuntimeError for the rest."""
    if status == OK:
        return
    msg = last_error() or lib().moba_strerror(status).decode()
    if status in (ERR_INVALID_ARGUMENT, ERR_WORKSPACE_TOO_SMALL):
        raise ValueError(msg)
    if status == ERR_UNSUPPORTED:
        raise NotImplementedError(msg)
    if status == ERR_OUT_OF_MEMORY:
        raise MemoryError(msg)
    raise RuntimeError("%s (%s)" % (msg, lib().moba_strerror(status).decode()))


_available = {}


def backend_available(backend):
    # Asked once per process: CUDA's answer (device count) does not change while it runs.
    if backend not in _available:
        _available[backend] = bool(lib().moba_backend_available(backend))
    return _available[backend]


def version():
    return lib().moba_version().decode()
