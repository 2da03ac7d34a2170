//! The gRPC code in `proto/generated/` is what `proto/` generates: the build
//! compiles the committed file (no protobuf compiler in a user's first build),
//! and this test regenerates it with the same compiler and settings.
//! `DEPLOY_CODE_REGENERATE=1 cargo test --test it ops::proto` rewrites it.

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_committed_grpc_code_is_generated_from_the_proto_file() {
    let root = Path::new(ROOT);
    let out = tempfile::tempdir().unwrap();
    let fds = protox::compile(["deploy_code/v1/deploy_code.proto"], [root.join("proto")])
        .expect("the proto file compiles");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("the code generates");
    let fresh = std::fs::read_to_string(out.path().join("deploy_code.v1.rs")).unwrap();
    let committed_path = root.join("proto/generated/deploy_code.v1.rs");
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if fresh != committed {
        if std::env::var_os("DEPLOY_CODE_REGENERATE").is_some() {
            std::fs::write(&committed_path, &fresh).unwrap();
        } else {
            panic!(
                "proto/generated/deploy_code.v1.rs is not what proto/ generates: run \
                 `DEPLOY_CODE_REGENERATE=1 cargo test --test it ops::proto` and commit it"
            );
        }
    }
}
