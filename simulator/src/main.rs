//! `wenxiao-sim`: the city simulator's command line (see `wenxiao_simulator::cli`).

fn main() -> std::process::ExitCode {
    wenxiao_simulator::cli::main()
}
