//! The gateway binary, built inside the test crate so process-level tests (SIGKILL and
//! restart) can run it: `wenxiao-gateway`'s own entry point, with a clock a test may shift.

fn main() -> std::process::ExitCode {
    // A test may replay a later time, to clear a day that has not ended in real time.
    if let Some(ms) = std::env::var("WENXIAO_TEST_CLOCK_OFFSET_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        wenxiao_gateway::clock::set_offset_ms(ms);
    }
    wenxiao_gateway::cli::main()
}
