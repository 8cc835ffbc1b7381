"""The Hugging Face Space of mage_hf: the same app as `mage-hf demo`, on the embedded mage-mnist model.

On the Space, the `mage_hf` package folder lies beside this file (see docs/demo.md, "Publishing the Space");
run from a checkout of the repository, `../src` is used. Spaces set GRADIO_SERVER_NAME, so `launch` listens
where the Space expects; locally it stays on 127.0.0.1.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent / "src"):
    if (folder / "mage_hf" / "__init__.py").is_file():
        sys.path.insert(0, str(folder))
        break

from mage_hf.demo.app import build_demo, launch  # noqa: E402

demo = build_demo()

if __name__ == "__main__":
    launch(demo)
