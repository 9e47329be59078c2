//! The `dyrep` binary (docs/ARCHITECTURE.md "CLI contract"); everything lives in the library so
//! plugin crates can build their own `dyrep` with extra ops and scorers linked in.

fn main() -> std::process::ExitCode {
    dyrep_cli::main()
}
