"""`mage-hf demo`: a gradio app (Generate, Inpaint / outpaint, Variations, Features) over one MAGE network.

`engine.py` holds the model side (plain Python), `app.py` the gradio Blocks and `examples.py` the example digits;
the command line is `mage_hf.commands.demo`. gradio is only needed by `app.py` (`pip install "mage_hf[demo]"`).

Example:
```python
>>> from mage_hf.demo import DemoEngine, build_demo
>>> build_demo(DemoEngine()).launch()          # http://127.0.0.1:7860
```
"""

from __future__ import annotations

import importlib

# name -> module: imported on first use, so `mage-hf demo --help` loads neither the models nor gradio
_EXPORTS = {"DemoEngine": "engine", "DemoInputError": "engine", "SamplingOptions": "engine", "run_to_end": "engine",
            "build_demo": "app", "launch": "app"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DemoEngine", "DemoInputError", "SamplingOptions", "build_demo", "launch", "run_to_end"]
