//! coremq-loadgen: placeholder until the load-generator issue fills it in.
fn main() {
    eprintln!("coremq-loadgen: not built yet; see issue 3 (the load generator)");
    std::process::exit(2);
}
