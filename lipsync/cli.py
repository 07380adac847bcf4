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
    if config.server.malloc_tuning:
        from lipsync.malloc import tune_malloc

        tune_malloc()
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


def _avatar_import(args: argparse.Namespace) -> int:
    from lipsync.avatar.synctalk_import import import_synctalk_dataset

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = import_synctalk_dataset(
        args.dataset,
        unet=args.unet,
        avatars_dir=args.avatars_dir,
        avatar_id=args.id,
        out_of_frame=args.out_of_frame,
        channel_order=args.channel_order,
        mel_pad_mode=args.mel_padding,
        face_interpolation=args.face_interpolation,
        frame_format=args.frame_format,
        overwrite=args.overwrite,
    )
    print(
        f"imported avatar {args.id!r} from {args.dataset}: {result.frame_count} frames, "
        f"{len(result.clipped_frames)} face boxes clipped, in {result.folder}"
    )
    return 0


def _add_package_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that `avatar build` and `avatar import` share: where and how to package."""
    parser.add_argument(
        "--avatars-dir",
        type=Path,
        default=Path("data/avatars"),
        help="folder to create the package in (default: data/avatars)",
    )
    parser.add_argument(
        "--channel-order",
        choices=["bgr", "rgb"],
        default="bgr",
        help="channel order the UNet was trained with (SyncTalk_2D: bgr)",
    )
    parser.add_argument(
        "--mel-padding",
        choices=["constant", "reflect"],
        default="constant",
        help="STFT padding the model was trained with (librosa >= 0.10: constant)",
    )
    parser.add_argument(
        "--face-interpolation",
        choices=["cubic", "linear"],
        default="cubic",
        help=(
            "interpolation of the face resizes (default: cubic). linear reproduces "
            "SyncTalk_2D's inference_328.py pixel for pixel, because its cv2.resize call passes "
            "INTER_CUBIC in the place of dst and OpenCV falls back to INTER_LINEAR"
        ),
    )
    parser.add_argument(
        "--frame-format",
        choices=["png", "jpg"],
        default="png",
        help="format of the stored backgrounds (png is lossless)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package")


def _add_avatar_import(avatar_commands: argparse._SubParsersAction) -> None:
    parser = avatar_commands.add_parser(
        "import",
        help="make an avatar package from a SyncTalk_2D dataset folder and its UNet ONNX",
        description=(
            "Build an avatar package from a SyncTalk_2D dataset folder (full_body_img/N.jpg "
            "numbered from 0, landmarks/N.lms with 68 'x y' lines) and the UNet exported to "
            "ONNX. The face boxes are computed from the landmarks as inference_328.py does."
        ),
    )
    parser.add_argument("--id", required=True, help="avatar id (the package's folder name)")
    parser.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="SyncTalk_2D dataset folder with full_body_img/ and landmarks/",
    )
    parser.add_argument("--unet", type=Path, required=True, help="the UNet exported to ONNX")
    parser.add_argument(
        "--out-of-frame",
        choices=["reject", "clip"],
        default="reject",
        help=(
            "what to do with a face box that leaves the frame: reject (default) stops with the "
            "frame number and the box; clip clips it to the frame and logs how many were clipped"
        ),
    )
    _add_package_options(parser)
    parser.set_defaults(handler=_avatar_import)


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


def _stream(args: argparse.Namespace) -> int:
    import queue
    import threading

    from lipsync.client import LipsyncClient, StreamStats
    from lipsync.media import read_wav
    from lipsync.protos import compositing_pb2

    if not args.chunk_ms > 0:
        print(f"lipsync stream: --chunk-ms {args.chunk_ms:g} must be positive", file=sys.stderr)
        return 2
    audio = read_wav(args.audio)
    if args.frames_dir is not None:
        args.frames_dir.mkdir(parents=True, exist_ok=True)

    # Frames are saved on a second thread, so a slow MP4 encoder does not delay the receiving
    # loop and the measured arrival times.
    frames: queue.Queue = queue.Queue()
    errors: list[Exception] = []
    saver = threading.Thread(
        target=_save_stream_frames, args=(frames, args, audio, errors), daemon=True
    )
    saver.start()
    client = LipsyncClient(args.server)
    stats = StreamStats()
    try:
        for frame in client.stream_render(
            args.avatar,
            audio,
            chunk_ms=args.chunk_ms,
            paced=args.paced,
            lookahead_rows=args.lookahead_rows,
            start_frame=args.start_frame,
            output_format=compositing_pb2.PNG if args.png else compositing_pb2.JPEG,
            jpeg_quality=args.jpeg_quality,
            stats=stats,
        ):
            frames.put(frame)
    finally:
        frames.put(None)
        saver.join()
        client.close()
    if errors:
        raise errors[0]
    for path in (args.output, args.frames_dir):
        if path is not None:
            print(f"wrote {path}")
    print(f"stream {stats.session_id}: {stats.summary()}")
    return 0


def _save_stream_frames(frames, args: argparse.Namespace, audio, errors: list) -> None:
    import cv2
    import numpy as np

    from lipsync.media import Mp4Writer

    writer = None
    try:
        while (frame := frames.get()) is not None:
            if args.frames_dir is not None:
                suffix = "png" if args.png else "jpg"
                (args.frames_dir / f"{frame.index:06d}.{suffix}").write_bytes(frame.image)
            if args.output is not None:
                if writer is None:
                    writer = Mp4Writer(
                        args.output, width=frame.width, height=frame.height, audio=audio
                    )
                writer.add_frame(cv2.imdecode(np.frombuffer(frame.image, np.uint8), 1))
    except Exception as exc:  # re-raised by _stream on the main thread
        errors.append(exc)
        while frames.get() is not None:
            pass
    finally:
        if writer is not None:
            writer.close()


def _add_stream(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "stream",
        help="stream a WAV file in chunks through StreamRender and report the latency",
        description=(
            "Send a WAV file to StreamRender in chunks at the pace of the audio, save the "
            "frames, and print the first-frame latency (from the first chunk sent), the p50 "
            "and p95 frame latency and the real-time factor. A frame's latency is its arrival "
            "time minus the time the chunk that completed the audio it depends on was sent "
            "(see docs/streaming.md). The real-time factor is the time from the first chunk to "
            "the last frame divided by the audio's duration."
        ),
    )
    parser.add_argument("--audio", type=Path, required=True, help="WAV file (16-bit PCM or float)")
    parser.add_argument("--avatar", required=True, help="avatar id")
    parser.add_argument(
        "--server",
        default="127.0.0.1:50052",
        help="compositing service host:port (default: 127.0.0.1:50052)",
    )

    parser.add_argument(
        "--chunk-ms",
        type=float,
        default=20.0,
        help="audio per chunk in milliseconds; chunk j is sent j x chunk-ms after the first "
        "(default: 20)",
    )

    output = parser.add_mutually_exclusive_group()
    output.add_argument("--output", type=Path, help="MP4 file to write, with the WAV as audio")
    output.add_argument("--frames-dir", type=Path, help="folder to write the encoded frames to")

    parser.add_argument(
        "--paced",
        action="store_true",
        help="live mode: the server emits 25 frames per second and fills gaps with silence",
    )
    parser.add_argument(
        "--lookahead-rows",
        type=int,
        choices=range(0, 9),
        metavar="{0-8}",
        help="future audio-feature rows each frame waits for (default 8: frames identical to "
        "lipsync render); each row fewer lowers the latency by 40 ms and changes the frames",
    )
    parser.add_argument(
        "--start-frame", type=int, default=0, help="position in the background loop of frame 0"
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=0,
        help="JPEG quality 1-100 of the frames (default: the server's)",
    )
    parser.add_argument("--png", action="store_true", help="ask for PNG frames instead of JPEG")
    parser.set_defaults(handler=_stream)


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
        stream_rounds=args.stream_rounds,
        stream_seconds=args.stream_seconds,
    )
    return 0


def _soak(args: argparse.Namespace) -> int:
    from lipsync.soak import soak_from_args

    return soak_from_args(args)


def _health(args: argparse.Namespace) -> int:
    from lipsync.client import wait_for_serving
    from lipsync.tls import ClientTlsConfig, wait_for_serving_over_tls

    if (args.cert_file is None) != (args.key_file is None):
        print("lipsync health: --cert-file and --key-file must be given together", file=sys.stderr)
        return 2
    if args.tls or args.ca_file or args.cert_file or args.server_name:
        tls = ClientTlsConfig(
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            server_name_override=args.server_name,
        )
        serving = wait_for_serving_over_tls(args.address, tls, args.timeout, args.service)
    else:
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
    _add_package_options(build)
    build.set_defaults(handler=_avatar_build)
    _add_avatar_import(avatar_commands)

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
    _add_stream(commands)

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
    bench.add_argument(
        "--model",
        choices=["demo", "synctalk"],
        default="demo",
        help="demo: the small demo UNet; synctalk: a random-weight UNet of "
        "SyncTalk_2D's size (12.2 M parameters)",
    )
    bench.add_argument("--batch-size", type=int, default=24, help="frames per request")
    bench.add_argument(
        "--iterations", type=int, default=30, help="timed requests per shape (alternating)"
    )
    bench.add_argument("--warmup", type=int, default=3, help="untimed requests per shape")
    bench.add_argument(
        "--throughput-seconds",
        type=float,
        default=10.0,
        help="seconds of closed-loop load per shape; 0 skips it",
    )
    bench.add_argument("--concurrency", type=int, default=2, help="clients in the throughput phase")
    bench.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where the models and avatars are built (default: data)",
    )
    bench.add_argument(
        "--stream-rounds",
        type=int,
        default=2,
        help="StreamRender rounds per shape, each paced and as fast as possible; 0 skips them",
    )
    bench.add_argument(
        "--stream-seconds", type=float, default=4.0, help="seconds of speech per stream"
    )
    bench.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    bench.set_defaults(handler=_bench)

    from lipsync.soak import add_soak_arguments

    soak = commands.add_parser(
        "soak", help="load a running service for a while, check every response, sample memory"
    )
    add_soak_arguments(soak)
    soak.set_defaults(handler=_soak)

    health = commands.add_parser("health", help="check a service's grpc.health.v1 status")
    health.add_argument("address", help="host:port")
    health.add_argument("--service", default="", help="service name (default: the server)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for SERVING")
    health.add_argument(
        "--tls", action="store_true", help="connect over TLS (implied by the options below)"
    )
    health.add_argument("--ca-file", type=Path, help="PEM CA certificates to verify the server")
    health.add_argument("--cert-file", type=Path, help="PEM client certificate, for mutual TLS")
    health.add_argument("--key-file", type=Path, help="PEM private key of --cert-file")
    health.add_argument(
        "--server-name",
        default="",
        help="host name to verify the server's certificate against (default: from the address)",
    )
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
