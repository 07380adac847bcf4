"""The `lipsync` command: serve either tier, build avatars, render audio, run the demo."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lipsync.errors import LipsyncError


def _serve(args: argparse.Namespace) -> int:
    from lipsync.logs import configure_logging
    from lipsync.settings import ConfigError, load_config

    if args.tier == "inference":
        from inference_service.config import InferenceConfig as Config
        from inference_service.server import serve
    elif args.tier == "monolithic":
        from lipsync.monolithic import MonolithicConfig as Config
        from lipsync.monolithic import serve
    else:
        from compositing_service.config import CompositingConfig as Config
        from compositing_service.server import serve

    try:
        config = load_config(args.config, Config)
    except ConfigError as exc:
        print(f"lipsync serve {args.tier}: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log.level, config.log.format)
    try:
        serve(config)
    except LipsyncError as exc:
        logging.getLogger("lipsync").error("%s service failed to start: %s", args.tier, exc)
        return 1
    return 0


def _avatar_build(args: argparse.Namespace) -> int:
    from lipsync.avatar.build import build_avatar

    source = args.video or args.frames
    folder = build_avatar(
        args.avatars_dir,
        args.id,
        backgrounds=source,
        crop_rects=args.crop_rects,
        unet=args.unet,
        channel_order=args.channel_order,
        mel_pad_mode=args.mel_padding,
        face_interpolation=args.face_interpolation,
        frame_format=args.frame_format,
        overwrite=args.overwrite,
    )
    print(f"built avatar {args.id!r} in {folder}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from lipsync.client import LipsyncClient
    from lipsync.media import read_wav

    audio = read_wav(args.audio)
    client = LipsyncClient(args.server)
    try:
        stats = client.render_to_mp4(
            args.avatar,
            audio,
            args.output,
            start_frame=args.start_frame,
            jpeg_quality=args.jpeg_quality,
            progress=not args.quiet,
        )
    finally:
        client.close()
    print(f"wrote {args.output}")
    print(f"timing: {stats.summary()}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lipsync.demo.run import run_demo

    logging.basicConfig(level=logging.WARNING)
    if args.prepare_only:
        from lipsync.demo.run import ensure_demo_data

        encoder, avatars_dir = ensure_demo_data(args.data_dir)
        print(f"demo audio encoder: {encoder}\ndemo avatar: {avatars_dir / 'demo'}")
        return 0
    run_demo(args.data_dir, args.output, audio=args.audio)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from lipsync.bench.command import run_bench

    run_bench(
        data_dir=args.data_dir,
        model=args.model,
        batch_size=args.batch_size,
        iterations=args.iterations,
        warmup=args.warmup,
        throughput_s=args.throughput_seconds,
        concurrency=args.concurrency,
        json_path=args.json,
    )
    return 0


def _health(args: argparse.Namespace) -> int:
    from lipsync.client import wait_for_serving

    serving = wait_for_serving(args.address, args.timeout, service=args.service)
    print(f"{args.address}: {'SERVING' if serving else 'NOT SERVING'}")
    return 0 if serving else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipsync", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the inference, the compositing or the monolithic service"
    )
    serve.add_argument("tier", choices=["inference", "compositing", "monolithic"])
    serve.add_argument("--config", type=Path, required=True, help="YAML config file")
    serve.set_defaults(handler=_serve)

    avatar = commands.add_parser("avatar", help="build avatar packages")
    avatar_commands = avatar.add_subparsers(dest="avatar_command", required=True)
    build = avatar_commands.add_parser(
        "build", help="make an avatar package from a video or numbered frames plus face boxes"
    )
    build.add_argument("--id", required=True, help="avatar id (the package's folder name)")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, help="background video file")
    source.add_argument("--frames", type=Path, help="folder of numbered frames (0.jpg, 1.jpg, ...)")
    build.add_argument(
        "--crop-rects",
        type=Path,
        required=True,
        help="JSON list of [x1, y1, x2, y2] face boxes, one per frame",
    )
    build.add_argument("--unet", type=Path, required=True, help="the avatar's UNet ONNX file")
    build.add_argument(
        "--avatars-dir",
        type=Path,
        default=Path("data/avatars"),
        help="folder to create the package in (default: data/avatars)",
    )
    build.add_argument(
        "--channel-order",
        choices=["bgr", "rgb"],
        default="bgr",
        help="channel order the UNet was trained with (SyncTalk_2D: bgr)",
    )
    build.add_argument(
        "--mel-padding",
        choices=["constant", "reflect"],
        default="constant",
        help="STFT padding the model was trained with (librosa >= 0.10: constant)",
    )
    build.add_argument(
        "--face-interpolation",
        choices=["cubic", "linear"],
        default="cubic",
        help="interpolation of the face resizes (linear matches SyncTalk_2D's inference_328.py)",
    )
    build.add_argument(
        "--frame-format",
        choices=["png", "jpg"],
        default="png",
        help="format of the stored backgrounds (png is lossless)",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing package")
    build.set_defaults(handler=_avatar_build)

    render = commands.add_parser(
        "render", help="render a WAV file into an MP4 via a running service"
    )
    render.add_argument("--audio", type=Path, required=True, help="WAV file (16-bit PCM or float)")
    render.add_argument("--avatar", required=True, help="avatar id")
    render.add_argument(
        "--server",
        default="127.0.0.1:50052",
        help="compositing service host:port (default: 127.0.0.1:50052)",
    )
    render.add_argument("-o", "--output", type=Path, required=True, help="MP4 file to write")
    render.add_argument(
        "--start-frame",
        type=int,
        default=0,
        help="position in the background loop of the first frame",
    )
    render.add_argument(
        "--jpeg-quality",
        type=int,
        default=0,
        help="JPEG quality 1-100 of the frames (default: the server's)",
    )
    render.add_argument("--quiet", action="store_true", help="no progress bar")
    render.set_defaults(handler=_render)

    demo = commands.add_parser(
        "demo", help="build the demo avatar, start both services and render the speech sample"
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where the demo models, avatar and run files go (default: data)",
    )
    demo.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("data/demo.mp4"),
        help="MP4 file to write (default: data/demo.mp4)",
    )
    demo.add_argument("--audio", type=Path, help="WAV file to render instead of the speech sample")
    demo.add_argument(
        "--prepare-only",
        action="store_true",
        help="only build the demo models and avatar, start nothing",
    )
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser(
        "bench", help="benchmark the monolithic and the split deployment side by side"
    )
    bench.add_argument("--model", choices=["demo", "synctalk"], default="demo",
                       help="demo: the small demo UNet; synctalk: a random-weight UNet of "
                       "SyncTalk_2D's size (12.2 M parameters)")
    bench.add_argument("--batch-size", type=int, default=24, help="frames per request")
    bench.add_argument("--iterations", type=int, default=30,
                       help="timed requests per shape (alternating)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed requests per shape")
    bench.add_argument("--throughput-seconds", type=float, default=10.0,
                       help="seconds of closed-loop load per shape; 0 skips it")
    bench.add_argument("--concurrency", type=int, default=2,
                       help="clients in the throughput phase")
    bench.add_argument("--data-dir", type=Path, default=Path("data"),
                       help="where the models and avatars are built (default: data)")
    bench.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    bench.set_defaults(handler=_bench)

    health = commands.add_parser("health", help="check a service's grpc.health.v1 status")
    health.add_argument("address", help="host:port")
    health.add_argument("--service", default="", help="service name (default: the server)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for SERVING")
    health.set_defaults(handler=_health)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except (LipsyncError, RuntimeError, ValueError, OSError) as exc:
        print(f"lipsync {args.command}: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)
