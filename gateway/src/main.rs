//! `wenxiao-gateway`: serve devices, manage the development PKI, migrate the store,
//! import the registry. See `wenxiao-gateway --help`.

fn main() -> std::process::ExitCode {
    wenxiao_gateway::cli::main()
}
