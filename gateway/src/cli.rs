//! Command line (filled in below).
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
