//! The simulator binary, built inside the test crate so a test can run `wenxiao-sim bench`
//! (which starts its shards as copies of itself): `wenxiao-sim`'s own entry point.

fn main() -> std::process::ExitCode {
    wenxiao_simulator::cli::main()
}
