//! The gateway binary, built inside the test crate so process-level tests (SIGKILL and
//! restart) can run it: `wenxiao-gateway`'s own entry point, unchanged.

fn main() -> std::process::ExitCode {
    wenxiao_gateway::cli::main()
}
