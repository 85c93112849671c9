"""Serve the explorer page on 127.0.0.1 (offline: no external assets).

    python -m spark_vlm.explorer                                   # make demo's runs/stage1_words + runs/stage2_words
    python -m spark_vlm.explorer --stage1 runs/stage1 --stage2 runs/stage2 --port 8000   # the no-argument runs
    python -m spark_vlm.explorer ... --compare-stage1 runs/clip1 --compare-stage2 runs/clip2   # side by side

Pick a built-in test scene (or upload a PNG/JPEG), caption it, click a word to see where it looked; type a caption
to see SPARK's per-token alignment; ask POPE's yes/no question about an object. On scenes the hallucinated object
words are marked (CHAIR's rules). A run that cannot be loaded is one `error:` line and exit code 2.
"""
import argparse

from spark_vlm.evaluation.report import error_line
from spark_vlm.explorer.server import create_app, serve
from spark_vlm.explorer.session import RunPair


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spark_vlm.explorer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", default="runs/stage1_words", help="stage-1 run directory (SPARK alignment maps)")
    parser.add_argument("--stage2", default="runs/stage2_words", help="stage-2 run directory (the captioner)")
    parser.add_argument("--compare-stage1", help="a second stage-1 run, shown side by side")
    parser.add_argument("--compare-stage2", help="the second pair's stage-2 run")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    args = parser.parse_args(argv)
    if bool(args.compare_stage1) != bool(args.compare_stage2):
        parser.error("--compare-stage1 and --compare-stage2 go together")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    runs = [(args.stage1, args.stage2)] + ([(args.compare_stage1, args.compare_stage2)] if args.compare_stage1 else [])
    try:
        pairs = [RunPair(stage1, stage2, args.device) for stage1, stage2 in runs]
    except (OSError, ValueError) as e:
        parser.exit(2, error_line(e))
    print(f"explorer: http://127.0.0.1:{args.port}/  (Ctrl-C to stop)", flush=True)
    serve(create_app(pairs), args.port).run()


if __name__ == "__main__":
    main()
