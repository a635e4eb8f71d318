"""Run by the R package once Python is started, before `import spalstf`.

R links the BLAS it was built with into its process (on Debian and Ubuntu often the
reference BLAS, libblas.so.3), in the global symbol scope. torch's CPU library carries its own
BLAS (MKL, statically linked) and exports it under the same names (sgemm_, sgemv_, ...), so
the dynamic linker binds torch's own calls to the definitions loaded first: R's. Every matrix
product of the model then runs on R's BLAS: 10 to 20 times slower with the reference BLAS.
Imported with RTLD_DEEPBIND, torch's libraries look up their own symbols first.
"""

from __future__ import annotations

import os
import sys


def import_torch() -> str:
    """Import torch with RTLD_DEEPBIND (Linux); returns what was done."""
    if "torch" in sys.modules:
        return "torch was already imported"
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or not sys.platform.startswith("linux"):
        return "not needed on this platform"
    if os.environ.get("SPALSTF_DEEPBIND", "1").strip().lower() in ("0", "false", "no"):
        return "turned off by SPALSTF_DEEPBIND"
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import torch  # noqa: F401
    except ImportError as err:  # `import spalstf` reports it again, with its own message
        return f"torch could not be imported: {err}"
    finally:
        sys.setdlopenflags(flags)
    return "torch imported with RTLD_DEEPBIND"
