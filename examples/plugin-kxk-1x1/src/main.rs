//! `dyrep-with-kxk-1x1`: the full `dyrep` command with this plugin linked in, e.g.
//! `dyrep-with-kxk-1x1 ops` lists `conv_kxk_1x1`, `dyrep-with-kxk-1x1 verify --op conv_kxk_1x1`
//! checks its fusion.

fn main() -> std::process::ExitCode {
    dyrep_plugin_kxk_1x1::ensure_linked();
    dyrep_cli::main()
}
