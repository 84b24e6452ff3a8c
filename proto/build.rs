//! Compiles the protocol with protox (a pure-Rust protobuf compiler), so
//! building Cohort needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cohort.proto");
    let fds = protox::compile(["cohort.proto"], ["proto"])?;
    tonic_prost_build::compile_fds(fds)?;
    Ok(())
}
