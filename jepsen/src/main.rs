//! Placeholder: the fault-injection harness is being written (issue 5).
fn main() {
    eprintln!("routemq-jepsen: not built yet");
    std::process::exit(2);
}
