"""The committed stubs in lipsync/protos match the .proto files they were generated from."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_NAMES = ["compositing", "inference"]


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh_descriptors(tmp_path_factory) -> dict[str, bytes]:
    """Compile proto/*.proto now and return each file's serialized FileDescriptorProto."""
    import grpc_tools
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"--proto_path=lipsync/protos={REPO_ROOT / 'proto'}",
            f"--proto_path={include}",
            f"--descriptor_set_out={out}",
            *[str(REPO_ROOT / "proto" / f"{name}.proto") for name in PROTO_NAMES],
        ]
    )
    assert code == 0
    file_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {Path(f.name).stem: _canonical(f) for f in file_set.file}


def _canonical(file_proto) -> bytes:
    """Serialize a FileDescriptorProto without json_name, which only protoc's set output adds."""
    for message in _all_messages(file_proto.message_type):
        for field in message.field:
            field.ClearField("json_name")
    return file_proto.SerializeToString(deterministic=True)


def _all_messages(messages):
    for message in messages:
        yield message
        yield from _all_messages(message.nested_type)


@pytest.mark.parametrize("name", PROTO_NAMES)
def test_committed_stubs_match_proto(name, fresh_descriptors):
    from google.protobuf import descriptor_pb2

    module = importlib.import_module(f"lipsync.protos.{name}_pb2")
    committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    assert _canonical(committed) == fresh_descriptors[name], (
        f"lipsync/protos/{name}_pb2.py is out of date with proto/{name}.proto: "
        "run `python scripts/generate_protos.py` and commit the result"
    )


@pytest.mark.parametrize("name", PROTO_NAMES)
def test_grpc_stubs_list_every_method(name):
    messages = importlib.import_module(f"lipsync.protos.{name}_pb2")
    stubs = importlib.import_module(f"lipsync.protos.{name}_pb2_grpc")
    for service in messages.DESCRIPTOR.services_by_name.values():
        servicer = getattr(stubs, f"{service.name}Servicer")
        for method in service.methods:
            assert hasattr(servicer, method.name), (
                f"{name}_pb2_grpc.py lacks {service.name}.{method.name}: regenerate the stubs"
            )


def test_generate_script_reproduces_stubs(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        generate_protos = _load_module(REPO_ROOT / "scripts" / "generate_protos.py", "gen")
    finally:
        sys.path.pop(0)
    files = generate_protos.generate(tmp_path)
    names = sorted(p.name for p in files)
    assert names == sorted(p.name for p in (REPO_ROOT / "lipsync" / "protos").glob("*_pb2*.py*"))
    grpc_module = (tmp_path / "lipsync" / "protos" / "inference_pb2_grpc.py").read_text()
    assert "from lipsync.protos import inference_pb2" in grpc_module


def test_public_api_keeps_legacy_field_numbers():
    from lipsync.protos import compositing_pb2

    request = compositing_pb2.CompositeBatchRequest.DESCRIPTOR.fields_by_name
    legacy = {
        "model_id": 1,
        "visual_frames": 2,
        "raw_audio": 3,
        "audio_features": 4,
        "batch_size": 5,
        "start_frame_idx": 6,
        "sample_rate": 7,
    }
    for field, number in legacy.items():
        assert request[field].number == number, field

    response = compositing_pb2.CompositeBatchResponse.DESCRIPTOR.fields_by_name
    legacy = {
        "composited_frames": 1,
        "inference_time_ms": 2,
        "composite_time_ms": 3,
        "total_time_ms": 4,
        "audio_processing_ms": 5,
        "model_loaded": 6,
        "model_load_time_ms": 7,
        "success": 8,
        "error": 9,
        "gpu_id": 10,
    }
    for field, number in legacy.items():
        assert response[field].number == number, field

    service = compositing_pb2.DESCRIPTOR.services_by_name["CompositingService"]
    for method in [
        "InferBatchComposite",
        "ListModels",
        "LoadModel",
        "UnloadModel",
        "GetModelStats",
        "Health",
    ]:
        assert method in service.methods_by_name
    assert compositing_pb2.DESCRIPTOR.package == "compositing"
