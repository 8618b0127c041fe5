"""Make ``backdrop`` importable when a job runs from a bare checkout.

``ray job submit --working-dir .`` copies the repository into the job's working directory
without installing it; the library lives in ``platform/`` (src layout), so put that on the
path. An installed ``backdrop`` (pip install -e ., a container image) works the same.
"""

import os
import sys

_platform = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "platform")
if os.path.isdir(_platform) and _platform not in sys.path:
    sys.path.insert(0, os.path.abspath(_platform))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray workers started for this job import backdrop too: hand them the same path.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.abspath(_platform), os.environ.get("PYTHONPATH", "")) if p
)
