"""The committed stubs are what `grpc_tools.protoc` makes of the proto."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STUBS = ["deploy_code_pb2.py", "deploy_code_pb2.pyi", "deploy_code_pb2_grpc.py"]


def test_stubs_are_generated_from_the_proto(tmp_path):
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"),
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            str(REPO / "proto/deploy_code/v1/deploy_code.proto"),
        ],
        check=True,
    )
    for name in STUBS:
        fresh = (tmp_path / "deploy_code/v1" / name).read_text()
        committed = (REPO / "python/deploy_code/v1" / name).read_text()
        assert fresh == committed, (
            f"python/deploy_code/v1/{name} is out of date: regenerate it "
            "(see python/README.md)"
        )
