"""`mage-hf demo`: serve the gradio demo on this machine (default http://127.0.0.1:7860).

    mage-hf demo                                   # the embedded mage-mnist, this machine only
    mage-hf demo --pipeline mage-vit-b-pipeline --model mage-vit-b --port 8000
    mage-hf demo --host 0.0.0.0                    # reachable from the network (no authentication!)
    mage-hf demo --share                           # also a public gradio.live link (needs the internet)
"""

import argparse

DEFAULT = "default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=DEFAULT,
                        help="MagePipeline folder to generate with, or 'default' (the embedded mage-mnist)")
    parser.add_argument("--model", default=DEFAULT,
                        help="MAGE model folder for the Features tab (AutoModel), or 'default' (mage-mnist's)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also publish a temporary public *.gradio.live link (off by default; needs the internet)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..default_model import DEFAULT_MODEL, DEFAULT_PIPELINE

    try:
        from ..demo.app import build_demo, launch
    except ImportError as error:
        raise ImportError(f'the demo needs gradio ({error}); install it with: pip install "mage_hf[demo]"') from error
    from ..demo.engine import DemoEngine

    pipeline = DEFAULT_PIPELINE if args.pipeline == DEFAULT else args.pipeline
    model = DEFAULT_MODEL if args.model == DEFAULT else args.model
    try:
        engine = DemoEngine(pipeline, model, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the demo's models ({error})") from error
    demo = build_demo(engine)
    _, local_url, share_url = launch(demo, server_name=args.host, server_port=args.port, share=args.share,
                                     prevent_thread_lock=True, quiet=True)
    reach = f"publicly on {share_url}" if share_url else (
        "this machine only" if args.host == "127.0.0.1" else f"listening on {args.host}")
    print(f"MAGE demo running on {local_url} ({reach}); Ctrl+C stops it", flush=True)
    demo.block_thread()  # until Ctrl+C
    return 0


__all__ = ["add_arguments", "run"]
