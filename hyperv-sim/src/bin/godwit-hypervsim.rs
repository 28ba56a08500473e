//! `godwit-hypervsim --listen ADDR --data DIR`: the Hyper-V/WinRM simulator as a process.
fn main() {
    std::process::exit(godwit_hyperv_sim::main_cli());
}
